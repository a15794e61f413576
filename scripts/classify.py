"""Apply a trained DeepConvLSTM or patch-classifier checkpoint to new data: ``convlstm-vp classify``.

    python scripts/classify.py --checkpoint runs/jv/checkpoints/best.pt --data aeon:JapaneseVowels --output out/

Writes out/predictions.csv (and, with labels, metrics.json and confusion_matrix.png); the code and
its documentation are in convlstm_vp/train/classify.py (``--help``).
"""

from convlstm_vp.train.classify import main

if __name__ == "__main__":
    main()
