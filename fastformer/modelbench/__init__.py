"""Model benchmarks behind `fastformer bench`: which model (models), its inputs (inputs), the
implementations compared (backends, onnx_runtime), timing and statistics (timing), the grid (runner),
and the outputs (report). Facts about the machine go with every result (machine)."""
