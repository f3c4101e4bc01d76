"""Reading inputs and writing results: frame sources, the id-PNG codec, output formats, staging."""
