"""Predict the next frames of your own video with a trained checkpoint: ``convlstm-vp predict``.

    python scripts/predict.py --checkpoint runs/cpu-quick/checkpoints/best.pt --input clip.mp4 --output out.gif

The code and its documentation are in convlstm_vp/train/predict.py (``--help``).
"""

from convlstm_vp.train.predict import main

if __name__ == "__main__":
    main()
