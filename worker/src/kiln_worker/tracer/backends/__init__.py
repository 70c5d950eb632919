"""Compiler backends of the tracer (``xla`` here; ``neuron`` delegates to tensorflow-neuron)."""
