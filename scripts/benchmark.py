"""Benchmark the ConvLSTM layer and models against a classic reference, torch.nn.LSTM and Keras.

    python scripts/benchmark.py --quick --json /tmp/bench.json

The same as ``convlstm-vp benchmark ...``; the code and its documentation (cases, FLOPs, floors)
are in ``convlstm_vp/bench/`` (``python scripts/benchmark.py --help``).
"""

from convlstm_vp.bench.run import main

if __name__ == "__main__":
    main()
