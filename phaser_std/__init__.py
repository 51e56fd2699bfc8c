"""phaser_std: the bundled plugin with every built-in backend, loader, engine and observer."""
