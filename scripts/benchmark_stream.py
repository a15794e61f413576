"""Streaming prediction speed (frames/s, latency per frame) in PyTorch and onnxruntime.

    python scripts/benchmark_stream.py --json stream.json             # cpu-quick and the 3x64 model

The code and its documentation are in convlstm_vp/bench/stream.py (``--help``).
"""

from convlstm_vp.bench.stream import main

if __name__ == "__main__":
    main()
