"""textfleet serving layer on Ray Serve (one application per model)."""
