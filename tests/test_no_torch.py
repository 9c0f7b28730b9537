"""DESIGN decision 3: export and the runtime loader work where PyTorch cannot be imported."""
from no_torch import run_without_torch


def test_torch_is_really_hidden():
    result = run_without_torch("import torch")
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr


def test_export_load_train_predict_without_torch(tmp_path):
    result = run_without_torch(f"""
        import numpy as np
        from latent_replay.models.load import load_weights
        from latent_replay.export.exporter import export
        from latent_replay.runtime.engine import Back, Front
        weights = load_weights("random")
        export(weights, "conv5_4/dw", 10, r"{tmp_path / 'art'}")
        front, back = Front(r"{tmp_path / 'art'}"), Back(r"{tmp_path / 'art'}")
        frames = np.random.default_rng(0).integers(0, 256, (4, 128, 128, 3), dtype=np.uint8)
        latent = front(frames)
        before = back.get("mid_fc7/weight")
        back.configure(back.trainable, {{n: 0.1 for n in back.trainable}}, 0.9, 5e-4, 0.01)
        loss = back.step(latent, np.array([0, 1, 2, 3]), 1.25, 0.5)
        assert np.isfinite(loss) and back.batch_stats()
        assert not np.allclose(before, back.get("mid_fc7/weight"))
        assert back.logits(latent).shape == (4, 10)
        print("OK")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
