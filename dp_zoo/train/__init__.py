"""DP-SGD training: configs, data, the DP step, the engine and the CLI."""
