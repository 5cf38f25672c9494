"""Wire formats: encoding and decoding only, no I/O."""
