<#
.SYNOPSIS
    Writes this Exchange server's transport queues (Get-Queue) to a JSON file for
    exchange-auth-exporter, atomically.

.DESCRIPTION
    Runs Get-Queue against one transport server and writes every queue with explicit fields:
    Identity, DeliveryType and Status (each as {name, value}), MessageCount, NextHopDomain,
    LastError, RetryCount, LastRetryTime and NextRetryTime (ISO 8601 UTC or null), and Velocity,
    IncomingRate and OutgoingRate where this Exchange version has them. The document carries
    schema_version, server and generated_at (ISO 8601 UTC).

    The JSON is written to a temporary file in the destination folder and then renamed over the
    destination, so a reader on the share sees the previous snapshot or the new one, never half a
    file.

    The Exchange cmdlets come from the shell the script runs in (the Exchange Management Shell)
    or, when Get-Queue is not there, from the Exchange snap-in, which is loaded here.

    Exit codes: 0 written; 2 the Exchange cmdlets could not be loaded; 3 Get-Queue failed;
    4 the file could not be written; 1 anything else. The reason goes to standard error.

    The script reads queues only; it holds no credentials and changes nothing in Exchange.

.PARAMETER Path
    The JSON file to write, on a local disk or a UNC path, e.g. \\files01\queuesnap$\EXCH01.json.
    Its folder must exist and be writable by the account the task runs as.

.PARAMETER Server
    The transport server whose queues are read. Defaults to this computer.

.PARAMETER ResultSize
    The most queues to read (Get-Queue -ResultSize). Defaults to 5000.

.EXAMPLE
    .\Export-QueueSnapshot.ps1 -Path D:\QueueSnapshots\EXCH01.json

    Writes this server's queues once, to a local folder that is shared to the exporter host.

.EXAMPLE
    schtasks.exe /Create /TN "exchange-auth-exporter\Queue snapshot" /SC MINUTE /MO 1 /RU CORP\svc-queuesnap /RP * /TR "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy RemoteSigned -File C:\Scripts\Export-QueueSnapshot.ps1 -Path D:\QueueSnapshots\EXCH01.json"

    Runs the script every minute as CORP\svc-queuesnap; /RP * asks for the password once, and
    Task Scheduler stores it. Nothing is stored in the script.

.EXAMPLE
    $action = New-ScheduledTaskAction -Execute 'powershell.exe' -Argument '-NoProfile -NonInteractive -ExecutionPolicy RemoteSigned -File C:\Scripts\Export-QueueSnapshot.ps1 -Path D:\QueueSnapshots\EXCH01.json'
    $trigger = New-ScheduledTaskTrigger -Once -At (Get-Date) -RepetitionInterval (New-TimeSpan -Minutes 1) -RepetitionDuration (New-TimeSpan -Days 3650)
    $principal = New-ScheduledTaskPrincipal -UserId 'CORP\gmsa-queuesnap$' -LogonType Password
    $settings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit (New-TimeSpan -Minutes 5) -MultipleInstances IgnoreNew
    Register-ScheduledTask -TaskName 'exchange-auth-exporter queue snapshot' -Action $action -Trigger $trigger -Principal $principal -Settings $settings

    The same every minute with Register-ScheduledTask, as a group Managed Service Account (no
    password to handle); an overrunning run is not started twice.

.NOTES
    Works in Windows PowerShell 5.1 (and later). Exchange Server 2013, 2016 and 2019; on
    Exchange 2010 the snap-in is Microsoft.Exchange.Management.PowerShell.E2010, tried second.
    Project: exchange-auth-exporter, docs/queue-snapshots.md.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)]
    [ValidateNotNullOrEmpty()]
    [ValidatePattern('\.json$')]
    [string] $Path,

    [ValidateNotNullOrEmpty()]
    [ValidatePattern('^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$')]
    [string] $Server = $env:COMPUTERNAME,

    [ValidateRange(1, 100000)]
    [int] $ResultSize = 5000
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$SchemaVersion = 1
$Invariant = [System.Globalization.CultureInfo]::InvariantCulture
$IsoFormat = "yyyy-MM-dd'T'HH:mm:ss.fff'Z'"

# Names by number, used only when a deserialised object (remote shell) hands an enum over as
# text or as a bare number; a live enum gives its own name and number.
$StatusNames = @('None', 'Active', 'Ready', 'Retry', 'Suspended', 'Connecting', 'Throttled')
$DeliveryTypeNames = @(
    'Undefined', 'DnsConnectorDelivery', 'MapiDelivery', 'NonSmtpGatewayDelivery',
    'SmartHostConnectorDelivery', 'SmtpRelayToRemoteAdSite', 'SmtpRelayToTiRg',
    'SmtpRelayWithinAdSite', 'SmtpRelayWithinAdSiteToEdge', 'Unreachable', 'ShadowRedundancy',
    'Heartbeat', 'DeliveryAgent', 'SmtpDeliveryToMailbox', 'SmtpRelayToDag',
    'SmtpRelayToMailboxDeliveryGroup', 'SmtpRelayToConnectorSourceServers', 'SmtpRelayToServers'
)

function Stop-WithCode {
    param([int] $Code, [string] $Message)
    [Console]::Error.WriteLine("Export-QueueSnapshot: $Message")
    exit $Code
}

function Get-OptionalProperty {
    # Strict mode throws on a property the object lacks; Velocity and the rates are 2013+ only.
    param($InputObject, [string] $Name)
    $property = $InputObject.PSObject.Properties[$Name]
    if ($null -eq $property) { return $null }
    return $property.Value
}

function ConvertTo-EnumField {
    param($Value, [string[]] $Names)
    if ($null -eq $Value) { return $null }
    $base = $Value.PSObject.BaseObject
    $name = [string] $Value
    $number = $null
    if ($base -is [System.Enum]) {
        $number = [int] $base
    }
    elseif ($name -match '^\d+$') {
        $number = [int] $name
    }
    elseif ($base -is [int] -or $base -is [int16] -or $base -is [long]) {
        # A deserialised enum: the number underneath, the name in its ToString().
        $number = [int] $base
    }
    if ($name -match '^\d+$' -and $number -lt $Names.Count) {
        $name = $Names[$number]
    }
    if ($null -eq $number) {
        $index = [Array]::IndexOf($Names, $name)
        if ($index -ge 0) { $number = $index }
    }
    return [ordered]@{ name = $name; value = $number }
}

function ConvertTo-IsoUtc {
    param($Value)
    if ($null -eq $Value) { return $null }
    try {
        $moment = [DateTime] $Value
    }
    catch {
        return $null
    }
    if ($moment -eq [DateTime]::MinValue) { return $null }
    return $moment.ToUniversalTime().ToString($IsoFormat, $Invariant)
}

function ConvertTo-QueueRecord {
    param($Queue)
    $record = [ordered]@{
        Identity      = [string] $Queue.Identity
        DeliveryType  = ConvertTo-EnumField -Value $Queue.DeliveryType -Names $DeliveryTypeNames
        Status        = ConvertTo-EnumField -Value $Queue.Status -Names $StatusNames
        MessageCount  = [int] $Queue.MessageCount
        NextHopDomain = [string] (Get-OptionalProperty $Queue 'NextHopDomain')
        LastError     = Get-OptionalProperty $Queue 'LastError'
        RetryCount    = Get-OptionalProperty $Queue 'RetryCount'
        LastRetryTime = ConvertTo-IsoUtc (Get-OptionalProperty $Queue 'LastRetryTime')
        NextRetryTime = ConvertTo-IsoUtc (Get-OptionalProperty $Queue 'NextRetryTime')
    }
    if ($null -ne $record.LastError) { $record.LastError = [string] $record.LastError }
    foreach ($name in @('Velocity', 'IncomingRate', 'OutgoingRate')) {
        $value = Get-OptionalProperty $Queue $name
        if ($null -ne $value) { $record[$name] = [double] $value }
    }
    return $record
}

function Get-ServerName {
    param([string] $Name)
    try {
        return ([System.Net.Dns]::GetHostEntry($Name).HostName).ToLowerInvariant()
    }
    catch {
        return $Name.ToLowerInvariant()
    }
}

# --- The Exchange cmdlets ------------------------------------------------------------------
if ($null -eq (Get-Command -Name Get-Queue -ErrorAction SilentlyContinue)) {
    $loaded = $false
    foreach ($snapIn in @('Microsoft.Exchange.Management.PowerShell.SnapIn',
            'Microsoft.Exchange.Management.PowerShell.E2010')) {
        if ($null -ne (Get-PSSnapin -Name $snapIn -Registered -ErrorAction SilentlyContinue)) {
            try {
                Add-PSSnapin -Name $snapIn
                $loaded = $true
                break
            }
            catch {
                Stop-WithCode 2 "cannot load the snap-in ${snapIn}: $($_.Exception.Message)"
            }
        }
    }
    if (-not $loaded -or $null -eq (Get-Command -Name Get-Queue -ErrorAction SilentlyContinue)) {
        Stop-WithCode 2 'Get-Queue is not available: run on an Exchange server, in the Exchange Management Shell or with the Exchange snap-in installed'
    }
}

# --- Read the queues -----------------------------------------------------------------------
try {
    $generatedAt = [DateTime]::UtcNow.ToString($IsoFormat, $Invariant)
    $queues = @(Get-Queue -Server $Server -ResultSize $ResultSize -ErrorAction Stop)
    $records = New-Object 'System.Collections.Generic.List[object]'
    foreach ($queue in $queues) {
        $records.Add((ConvertTo-QueueRecord $queue))
    }
}
catch {
    Stop-WithCode 3 "Get-Queue -Server $Server failed: $($_.Exception.Message)"
}

$snapshot = [ordered]@{
    schema_version = $SchemaVersion
    server         = Get-ServerName $Server
    generated_at   = $generatedAt
    generator      = 'Export-QueueSnapshot.ps1'
    queues         = $records.ToArray()
}
# Four levels: the document, the queues array, a queue, its {name, value} enums.
$json = ConvertTo-Json -InputObject $snapshot -Depth 4

# --- Write it: a temporary file in the same folder, then a rename over the old one ------------
$target = $null
$temporary = $null
try {
    $target = [System.IO.Path]::GetFullPath($Path)
    $folder = [System.IO.Path]::GetDirectoryName($target)
    if (-not [System.IO.Directory]::Exists($folder)) {
        Stop-WithCode 4 "the folder $folder does not exist"
    }
    # Same folder, so the rename stays on one volume (atomic) and never crosses to another share.
    $temporary = [System.IO.Path]::Combine($folder,
        ('.{0}.{1}.tmp' -f [System.IO.Path]::GetFileName($target), [Guid]::NewGuid().ToString('N')))
    $utf8 = New-Object System.Text.UTF8Encoding($false)
    [System.IO.File]::WriteAllText($temporary, $json, $utf8)
    if ([System.IO.File]::Exists($target)) {
        try {
            [System.IO.File]::Replace($temporary, $target, $null)
        }
        catch {
            # Some SMB servers refuse ReplaceFile; a forced move still never exposes half a file.
            Move-Item -LiteralPath $temporary -Destination $target -Force
        }
    }
    else {
        Move-Item -LiteralPath $temporary -Destination $target -Force
    }
}
catch {
    Stop-WithCode 4 "cannot write ${target}: $($_.Exception.Message)"
}
finally {
    if ($null -ne $temporary -and [System.IO.File]::Exists($temporary)) {
        Remove-Item -LiteralPath $temporary -Force -ErrorAction SilentlyContinue
    }
}

Write-Verbose ("{0} queues of {1} written to {2}" -f $records.Count, $Server, $target)
exit 0
