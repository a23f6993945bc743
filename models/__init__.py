"""How model directories are made: recipes that turn packaged model files into sources."""
