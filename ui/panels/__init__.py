"""Side panels: session control, replay transport, log."""
