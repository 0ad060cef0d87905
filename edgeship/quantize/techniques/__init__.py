"""The post-training quantisation techniques, of two kinds: on the float model's weights before conversion
(:mod:`.equalization`, :mod:`.adaround`, :mod:`.bias_correction`) and on the quantised int8 flatbuffer
(:mod:`.ranges`, :mod:`.fallback`, :mod:`.int8_bias_correction`, :mod:`.raw_input`)."""
