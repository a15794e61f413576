"""Export a trained model to ONNX: ``convlstm-vp export``.

    python scripts/export.py --checkpoint runs/cpu-quick/checkpoints/best.pt --output model.onnx [--form step]

The code and its documentation are in convlstm_vp/export.py (``--help``).
"""

from convlstm_vp.export import main

if __name__ == "__main__":
    main()
