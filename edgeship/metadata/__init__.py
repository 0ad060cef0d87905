"""The metadata each format carries for its clients (TFLite's ``TFLITE_METADATA`` flatbuffer, Core ML's classifier
labels): written by ``edgeship.export`` and ``edgeship.quantize``, read by ``edgeship.runtimes`` and ``inspect``.
Below all three, so none of them imports another to read a file's metadata."""
