"""The commands built on the device library: run, stream, predict, export, export-model, bench.

Each command parses its own options into a typed options object and calls the runtime; nothing
below this package imports it (models -> export -> runtime -> apps -> cli)."""
