"""Audio to arrays: decoding, log-frequency spectra, chroma and patch vectors."""
