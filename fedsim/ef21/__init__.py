"""EF21 building blocks: contractive compressors and a pure-numpy reference loop."""
