"""Inference engines that run exported models: llama.cpp on the CPU (``harness.engine.llamacpp``).

Optional: llama-cpp-python compiles llama.cpp when it installs, so nothing imports it until an engine
is asked for (``make install-engine`` installs it).
"""
