"""Does the scene teacher know what the policy lacks? Linear probes on θ_pre's visual tokens vs the teacher's features.

For each demo frame of a dataset (e.g. D_down), both representations are mean-pooled over the visual tokens and also
read at the token under the object and at the token under the hand; ridge regression (fitted on 70% of the episodes,
scored on the other 30%) predicts hand, object and goal xyz and the object-to-hand offset. Reported as held-out R²
per quantity; the teacher is useful as an alignment target where its R² is clearly above the policy's.

    python benchmarks/teacher_probe.py --data runs/data-down [--teacher DIR] [--policy DIR] [--layer 3]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

QUANTITIES = {"hand xyz": slice(0, 3), "object xyz": slice(4, 7), "goal xyz": slice(36, 39)}


def ridge_r2(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, lam: float = 1e-2) -> float:
    """Held-out R² (averaged over output dims) of ridge regression on standardised features."""
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    a, b = (x_tr - mu) / sd, (x_te - mu) / sd
    a = np.hstack([a, np.ones((len(a), 1))])
    b = np.hstack([b, np.ones((len(b), 1))])
    w = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ y_tr)
    pred = b @ w
    ss_res = ((y_te - pred) ** 2).sum(0)
    ss_tot = ((y_te - y_te.mean(0)) ** 2).sum(0) + 1e-12
    return float(np.mean(1 - ss_res / ss_tot))


def main() -> None:
    from capvector.data import open_dataset
    from capvector.objectives.foundation import SceneNet, default_teacher_dir
    from capvector.policy import load_policy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--policy", default=None, help="default: the shipped θ_pre")
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--every", type=int, default=2, help="use every n-th frame")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.policy is None:
        from capvector.assets import pretrained_policy_dir

        a.policy = str(pretrained_policy_dir())
    policy = load_policy(a.policy).eval()
    teacher = SceneNet.load(a.teacher or default_teacher_dir())
    ds = open_dataset(a.data)
    feats: dict[str, list[np.ndarray]] = {"policy": [], "teacher": []}
    states, episodes = [], []
    with torch.no_grad():
        for i in range(0, len(ds), a.every):
            s = ds[i]
            image = s["image"][None]
            text = policy.embed_instructions([s["instruction"]])
            hidden = policy(image, s["proprio"][None], text, hidden_layer=a.layer).visual_hidden
            feats["policy"].append(hidden[0].numpy())  # (T, width)
            t = teacher.features(image[:, 0])  # (1, D, 8, 8)
            feats["teacher"].append(t[0].flatten(1).T.numpy())  # (T, D)
            state = ds._episode(int(np.searchsorted(ds._starts, i, side="right") - 1))["state"][int(s["step"])]
            states.append(state)
            episodes.append(int(s["episode"]))
    states, episodes = np.stack(states), np.array(episodes)
    uniq = np.unique(episodes)
    rng = np.random.default_rng(0)
    test_eps = set(rng.choice(uniq, size=max(1, int(0.3 * len(uniq))), replace=False).tolist())
    test = np.array([e in test_eps for e in episodes])
    results = {}
    for name, tokens in feats.items():
        x = np.stack(tokens)  # (N, T, D)
        pooled = np.concatenate([x.mean(1), x.max(1)], axis=1)
        results[name] = {q: ridge_r2(pooled[~test], states[~test][:, sl], pooled[test], states[test][:, sl])
                         for q, sl in QUANTITIES.items()}
        off = states[:, 4:7] - states[:, 0:3]
        results[name]["object − hand"] = ridge_r2(pooled[~test], off[~test], pooled[test], off[test])
    print(f"held-out R² ({len(states)} frames, {len(uniq)} episodes, {len(test_eps)} held out)")
    print(f"{'quantity':16s} {'θ_pre tokens':>13s} {'teacher':>9s}")
    for q in results["policy"]:
        print(f"{q:16s} {results['policy'][q]:13.3f} {results['teacher'][q]:9.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"frames": len(states), "layer": a.layer, "r2": results}, f, indent=1)


if __name__ == "__main__":
    main()
