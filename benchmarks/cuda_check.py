"""Check emobridge's torch code paths on one device (a GPU smoke test, a few minutes at most).

``python benchmarks/cuda_check.py --device cuda --out DIR`` builds a tiny synthetic corpus and
tiny random models (wav2vec 2.0, Whisper, a wav2vec 2.0 pre-training model) in a temporary
folder, then runs named checks, each printing ``ok <name> <seconds>s <detail>`` or
``FAIL <name>: <error>`` and carrying on:

- ``device``: :func:`emobridge.runtime.torch_device` resolves and a tensor lands there;
- ``feat_*``: logmel, ``hf`` (mean-pooled and frames) and ``whisper`` (torch backend)
  extraction on the device, compared with the same extraction on the CPU;
- ``method_*``: every registered adaptation method fitted for 1-2 epochs on the device
  (model parameters on the device after ``fit``, finite probabilities summing to 1) and its
  saved state reloaded and predicting on the CPU;
- ``cli_train_predict``: ``emobridge train`` then ``emobridge predict`` with ``--device``;
- ``deep_wccn_ssl``: deep_wccn above the front end with the auxiliary wav2vec 2.0 loss;
- ``repeat_seeded_fit``: two seeded fits that fine-tune encoder layers give the same model.

``DIR/cuda_check.json`` holds every result; the exit status is 1 when a check failed.
``--only PATTERN...`` runs the checks whose names match (shell-style patterns).
``--device cpu`` runs the same checks on the CPU (slower).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Set before CUDA starts, so seed_everything's deterministic cuBLAS setting takes effect.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

from emobridge.fileio import write_json_atomic  # noqa: E402
from emobridge.methods import EmotionData, available_methods, build_method  # noqa: E402

#: tiny wav2vec 2.0 (tests/test_features_hf.py's TINY with one more conv layer, so frames
#: come at 200 Hz instead of 1600 Hz and the encoder layers stay fast on a CPU)
TINY_W2V = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "conv_dim": (16, 16, 16), "conv_kernel": (10, 4, 4),
            "conv_stride": (5, 4, 4), "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 2}
TINY_SSL = {"codevector_dim": 16, "proj_codevector_dim": 16, "num_codevector_groups": 2,
            "num_codevectors_per_group": 8}
TINY_SNSA = {"conv_channels": [8, 8], "kernel_size": 3, "lstm_hidden": 8, "attention_dim": 8,
             "dropout": 0.0}
TINY_VGG = {"depth": 11, "width": 0.125, "image_size": 32, "fc_dim": 16, "pool_size": 1,
            "dropout": 0.0}
LOGMEL = "logmel:preset=byols,n_mels=16,n_fft=512,win_length_samples=400," \
         "hop_length_samples=320"
NEURAL = {"epochs": 2, "batch_size": 16, "lr": 1e-2, "seed": 0}
SKIPPED = {"feat_opensmile": "opensmile", "feat_whisper_ct2": "ctranslate2",
           "cli_serve": "fastapi", "run_ray": "ray"}


@dataclass
class Variant:
    """How to feed one method: features (``vectors``, ``frames``, ``hf_frames``) and
    parameters (the device is added where the method has one)."""

    features: str
    params: dict[str, Any] = field(default_factory=dict)


#: The feeding of each known method; a registered method missing here fails its check.
VARIANTS: dict[str, dict[str, Variant]] = {
    "source_only": {"vectors": Variant("vectors", NEURAL),
                    "frames": Variant("frames", {**NEURAL, "backbone": "snsa",
                                                 "backbone_params": TINY_SNSA})},
    "supervised": {"vectors": Variant("vectors", NEURAL)},
    "dann": {"vectors": Variant("vectors", NEURAL),
             "frames": Variant("frames", {**NEURAL, "backbone": "snsa",
                                          "backbone_params": TINY_SNSA})},
    "nnpm": {"frames": Variant("frames", {**NEURAL, "epochs": 1, "pretrain_epochs": 1,
                                          "backbone": "snsa", "backbone_params": TINY_SNSA})},
    "pseudo_label": {"vectors": Variant("vectors", {
        **NEURAL, "pseudo_label_every_epochs": 1, "backbone_params": {"hidden_dims": [16]}})},
    "deep_wccn": {"vectors": Variant("vectors", {**NEURAL, "hidden_dim": 16}),
                  "hf": Variant("hf_frames", {**NEURAL, "hidden_dim": 16, "encoder": "hf",
                                              "trainable_layers": 1, "batch_size": 8})},
    "random_forest": {"vectors": Variant("vectors", {"n_estimators": 20, "n_jobs": 1})},
    "mmd": {"logmel": Variant("frames", {**NEURAL, "source_epochs": 1, "epochs": 1,
                                         "backbone_params": TINY_VGG})},
    "recommended": {"vectors": Variant("vectors", {"views": 2, "rounds": [0.5],
                                                   "max_iter": 200})},
}


class CheckFailed(Exception):
    """A check's own verdict (printed without an exception type)."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(exc, CheckFailed) else f"{type(exc).__name__}: {first}"


class Checks:
    """Runs named checks, prints one line each and keeps the results."""

    def __init__(self, patterns: list[str] | None) -> None:
        self.patterns = patterns
        self.results: list[dict[str, Any]] = []

    def wanted(self, name: str) -> bool:
        return not self.patterns or any(fnmatch.fnmatch(name, p) for p in self.patterns)

    def run(self, name: str, fn: Callable[[], str]) -> None:
        if not self.wanted(name):
            return
        start = time.perf_counter()
        try:
            detail, ok, error = fn(), True, ""
        except Exception as exc:  # every failure is reported and the next check runs
            detail, ok, error = "", False, one_line(exc)
            tb = traceback.format_exc()
        seconds = time.perf_counter() - start
        if ok:
            print(f"ok {name} {seconds:.1f}s {detail}", flush=True)
        else:
            print(f"FAIL {name}: {error}", flush=True)
        self.results.append({"name": name, "ok": ok, "seconds": round(seconds, 3),
                             "detail": detail, "error": error,
                             **({} if ok else {"traceback": tb})})


# -- the corpus and the tiny models ---------------------------------------------------------


class Context:
    """The temporary corpus, tiny models and device features, built on first use."""

    def __init__(self, device: str, root: Path) -> None:
        self.device = device
        self.root = root
        self._cache: dict[str, Any] = {}

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def manifest(self):
        from emobridge.synthetic import generate_corpus

        return self.cached("manifest", lambda: generate_corpus(
            self.root / "corpus", languages=("aa", "bb"), speakers_per_language=5,
            utterances_per_speaker_per_emotion=2, seed=0))

    @property
    def waves(self) -> list[np.ndarray]:
        from emobridge.audio import load_audio

        return self.cached("waves", lambda: [load_audio(p, 16_000)
                                             for p in self.manifest["path"]])

    def hf_model(self) -> str:
        return self.cached("hf_model", lambda: save_tiny_w2v(self.root / "w2v", ssl=False))

    def ssl_model(self) -> str:
        return self.cached("ssl_model", lambda: save_tiny_w2v(self.root / "w2v_ssl", ssl=True))

    def whisper_model(self) -> str:
        return self.cached("whisper_model", lambda: save_tiny_whisper(self.root / "whisper"))

    def spec(self, kind: str) -> str:
        """The extractor spec of a feature kind used by the method checks."""
        if f"spec:{kind}" in self._cache:
            return self._cache[f"spec:{kind}"]
        return {"vectors": f"hf:model={self.hf_model()},layer=-1,pooling=mean",
                "frames": LOGMEL,
                "hf_frames": f"hf:model={self.hf_model()},layer=1,pooling=none"}[kind]

    def features(self, spec: str, device: str | None = None) -> list[np.ndarray]:
        """Features of every corpus utterance with ``spec`` on ``device`` (default: ours)."""
        device = device or self.device
        return self.cached(f"{spec}@{device}", lambda: extract(spec, device, self.waves))

    def data(self, kind: str) -> tuple[EmotionData, EmotionData]:
        """(source language ``aa``, target language ``bb``) with ``kind`` features."""
        feats = self.features(self.spec(kind))
        m = self.manifest.reset_index(drop=True)
        classes = tuple(sorted(m["label"].unique()))
        parts = []
        for lang in ("aa", "bb"):
            idx = np.flatnonzero(m["language"].to_numpy() == lang)
            labels = [classes.index(m["label"][i]) for i in idx]
            parts.append(EmotionData([feats[i] for i in idx], np.array(labels),
                                     m["speaker"].to_numpy()[idx], m["language"].to_numpy()[idx],
                                     m["path"].to_numpy()[idx], classes))
        return parts[0], parts[1]


def save_tiny_w2v(folder: Path, ssl: bool) -> str:
    import transformers

    torch.manual_seed(0)
    if ssl:
        config = transformers.Wav2Vec2Config(**TINY_W2V, **TINY_SSL)
        model = transformers.Wav2Vec2ForPreTraining(config)
    else:
        model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**TINY_W2V))
    model.eval().save_pretrained(folder)
    return str(folder)


def save_tiny_whisper(folder: Path) -> str:
    """A tiny random Whisper (as tests/test_whisper.py builds it)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=16, vocab_size=64, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=3, suppress_tokens=None,
        begin_suppress_tokens=None)
    transformers.WhisperModel(config).eval().save_pretrained(folder)
    return str(folder)


def extract(spec: str, device: str, waves: list[np.ndarray]) -> list[np.ndarray]:
    from emobridge.features import build_extractor
    from emobridge.features.registry import parse_spec

    name, params = parse_spec(spec)
    ext = build_extractor({"name": name, "params": {**params, "device": device}})
    out = ext.extract_batch(waves, 16_000)
    if not all(np.isfinite(f).all() for f in out):
        raise CheckFailed(f"{spec} on {device}: non-finite features")
    return out


# -- checks ---------------------------------------------------------------------------------


def check_device(ctx: Context) -> str:
    from emobridge.runtime import torch_device

    dev = torch_device(ctx.device)
    x = torch.arange(6, dtype=torch.float32, device=dev).reshape(2, 3)
    y = (x @ x.T).cpu()
    if x.device.type != dev.type or float(y[1, 1]) != 50.0:
        raise CheckFailed(f"tensor on {x.device}, x @ x.T = {y.tolist()}")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return f"{dev} ({name}), torch {torch.__version__}"


def compare_extraction(ctx: Context, spec: str) -> str:
    """Features on the device against the CPU's: same shapes, max |diff| within 1e-2 of
    the CPU features' scale (loose: TF32 convolutions on a GPU differ by about 1e-3)."""
    ctx.manifest  # noqa: B018 (the corpus is generated outside the timed extraction)
    start = time.perf_counter()
    dev = ctx.features(spec)
    dev_s = time.perf_counter() - start
    cpu = dev if ctx.device == "cpu" else ctx.features(spec, "cpu")
    worst, scale = 0.0, 0.0
    for a, b in zip(dev, cpu, strict=True):
        if a.shape != b.shape:
            raise CheckFailed(f"shape {a.shape} on {ctx.device} vs {b.shape} on cpu")
        worst = max(worst, float(np.max(np.abs(a - b))))
        scale = max(scale, float(np.max(np.abs(b))))
    if worst > 1e-2 * max(scale, 1.0):
        raise CheckFailed(f"max |diff| {worst:.3g} vs cpu (scale {scale:.3g})")
    return (f"{len(dev)} utt, shape {dev[0].shape}, {ctx.device} {dev_s:.2f}s, "
            f"max |diff| vs cpu {worst:.2e} (scale {scale:.3g})")


def check_finite_proba(proba: np.ndarray, n: int, n_classes: int) -> None:
    proba = np.asarray(proba)
    if proba.shape != (n, n_classes):
        raise CheckFailed(f"predict_proba shape {proba.shape}, expected {(n, n_classes)}")
    if not np.isfinite(proba).all() or not np.allclose(proba.sum(axis=1), 1.0, atol=1e-4):
        raise CheckFailed("predict_proba rows are not finite probabilities summing to 1")


def fit_on_device(ctx: Context, name: str, variant: Variant, extra: dict[str, Any]
                  ) -> tuple[Any, EmotionData, str]:
    """Fit ``name`` with ``variant`` on the device; the method, the test data, a detail."""
    cls = available_methods()[name]
    params = {**variant.params, **extra}
    if "device" in cls.param_names():
        params["device"] = ctx.device
    source, target = ctx.data(variant.features)
    method = build_method(name, **params)
    before = 0
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    if cls.needs_target_labels:
        method.fit(source, target.without_labels(), target)
    else:
        method.fit(source, target.without_labels())
    return method, target, placement(ctx, method, before)


def placement(ctx: Context, method: Any, before: int) -> str:
    """Where the fitted torch model lives; raise when it is not on the wanted device."""
    model = getattr(method, "model_", None)
    if not isinstance(model, torch.nn.Module):
        return "no torch model (runs on the CPU whatever the device)"
    devices = {p.device.type for p in model.parameters()}
    wanted = torch.device(ctx.device).type
    if devices != {wanted}:
        raise CheckFailed(f"model parameters on {sorted(devices)} after fit, wanted {wanted}")
    detail = f"params on {wanted}"
    if wanted == "cuda":
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
        if peak <= 0:
            raise CheckFailed("no CUDA memory was allocated while fitting")
        detail += f", fit allocated up to {peak:.1f} MiB of CUDA memory"
    return detail


def check_method(ctx: Context, name: str, variant: Variant,
                 extra: dict[str, Any] | None = None) -> str:
    """Fit on the device and predict; then the saved method and a model bundle, each
    reloaded on the CPU, must predict the same."""
    from emobridge.inference.bundle import load_bundle, save_bundle

    method, test, detail = fit_on_device(ctx, name, variant, extra or {})
    proba = method.predict_proba(test)
    check_finite_proba(proba, len(test), len(test.classes))
    folder = Path(tempfile.mkdtemp(prefix=f"{name}_", dir=ctx.root))
    method.save(folder / "method")
    bundle = save_bundle(method, folder / "bundle", extractor=ctx.spec(variant.features))
    diffs = []
    for what, loaded in (("saved", lambda: type(method).load(folder / "method", device="cpu")),
                         ("bundle", lambda: load_bundle(bundle, device="cpu").method)):
        again = loaded().predict_proba(test)
        check_finite_proba(again, len(test), len(test.classes))
        diffs.append(float(np.max(np.abs(again - proba))))
        if diffs[-1] > 1e-3:
            raise CheckFailed(f"{what} method reloaded on cpu: probabilities differ by "
                              f"{diffs[-1]:.3g}")
    accuracy = float(np.mean(proba.argmax(axis=1) == test.labels))
    return (f"{detail}; accuracy {accuracy:.2f}; saved and bundle reloaded on cpu, "
            f"max |dp| {max(diffs):.1e}")


def method_checks(ctx: Context, checks: Checks) -> None:
    for name in sorted(available_methods()):
        if name not in VARIANTS:
            def unknown(name: str = name) -> str:
                raise CheckFailed(f"cuda_check does not know how to feed method {name!r}")
            checks.run(f"method_{name}", unknown)
            continue
        for label, variant in VARIANTS[name].items():
            extra = {"encoder_model": ctx.hf_model()} if variant.features == "hf_frames" \
                and checks.wanted(f"method_{name}_{label}") else {}
            checks.run(f"method_{name}_{label}",
                       lambda n=name, v=variant, e=extra: check_method(ctx, n, v, e))


def check_ssl(ctx: Context) -> str:
    """deep_wccn with the auxiliary wav2vec 2.0 loss, where this version accepts it."""
    from emobridge.errors import EmobridgeError
    from emobridge.features import build_extractor

    model = ctx.ssl_model()
    spec = f"hf:model={model},layer=cnn,pooling=none"
    params = {**NEURAL, "epochs": 1, "batch_size": 8, "hidden_dim": 16, "encoder": "hf",
              "encoder_model": model, "trainable_layers": "all", "ssl_loss_weight": 1e-3}
    try:
        build_extractor(spec)
        build_method("deep_wccn", **params).check_settings()
    except EmobridgeError as exc:
        raise CheckFailed(f"not available in this version ({one_line(exc)})") from None
    ctx._cache["spec:ssl_frames"] = spec
    variant = Variant("ssl_frames", params)
    return check_method(ctx, "deep_wccn", variant)


def check_repeat(ctx: Context) -> str:
    """Two fits with the same seed give the same probabilities (deep_wccn fine-tuning
    ``hf`` layers: attention and its backward pass on the device)."""
    variant = VARIANTS["deep_wccn"]["hf"]
    test = ctx.data(variant.features)[1]
    probas = [fit_on_device(ctx, "deep_wccn", variant, {"encoder_model": ctx.hf_model()})[0]
              .predict_proba(test) for _ in range(2)]
    diff = float(np.max(np.abs(probas[0] - probas[1])))
    if diff != 0.0:
        raise CheckFailed(f"two fits with the same seed differ by {diff:.3g}")
    return "two fits with the same seed: identical probabilities"


def cli(args: list[str]) -> None:
    from emobridge.cli import main

    code = main(args)
    if code != 0:
        raise CheckFailed(f"emobridge {args[0]} exited {code}")


def check_cli(ctx: Context) -> str:
    """``emobridge train`` on the synthetic corpus, then ``emobridge predict`` on one file."""
    import pandas as pd

    from emobridge.corpora.manifest import write_manifest
    from emobridge.features import FeatureStore

    root = ctx.root / "cli"
    manifests = {}
    for lang in ("aa", "bb"):
        manifests[lang] = root / f"{lang}.csv"
        write_manifest(ctx.manifest[ctx.manifest["language"] == lang], manifests[lang])
        FeatureStore(root / "store").extract(manifests[lang], LOGMEL, progress=False)
    out = root / "run"
    cli(["train", "--source", str(manifests["aa"]), "--target", str(manifests["bb"]),
         "--store", str(root / "store"), "--extractor", LOGMEL, "--out", str(out),
         "--method", "dann", "--device", ctx.device, "--param", "epochs=2",
         "--param", "batch_size=8", "--param", "backbone=attention", "--param",
         'backbone_params={"hidden_dim": 16, "attention_dim": 8, "dropout": 0.0}'])
    run = __import__("json").loads((out / "run.json").read_text())
    if run.get("device") != ctx.device:
        raise CheckFailed(f"run.json records device {run.get('device')!r}")
    wav = ctx.manifest["path"].iloc[-1]
    table = root / "predictions.csv"
    cli(["predict", "--model", str(out / "model"), "--device", ctx.device, "--out",
         str(table), str(wav)])
    rows = pd.read_csv(table)
    probs = rows[[c for c in rows.columns if c.startswith("p_")]].to_numpy(dtype=float)
    if len(rows) != 1 or probs.shape[1] != 4 or not np.isclose(probs.sum(), 1.0, atol=1e-3):
        raise CheckFailed(f"predict wrote {len(rows)} rows, columns {list(rows.columns)}")
    return (f"train ok (run.json device {run['device']}), predict {Path(wav).name} -> "
            f"{rows.iloc[0].get('emotion')}; {extractor_device_note(out / 'model', ctx)}")


def extractor_device_note(model: Path, ctx: Context) -> str:
    """Where ``emobridge predict --device`` runs the bundle's extractor."""
    from emobridge.inference.recognizer import Recognizer

    ext = Recognizer.load(model, device=ctx.device).extractor
    used = str(getattr(ext, "device", "?"))
    note = "" if used == ctx.device else " (NOTE: the bundle's extractor ignores --device)"
    return f"predict's extractor device: {used}{note}"


def run_all(ctx: Context, checks: Checks) -> None:
    for name, pkg in SKIPPED.items():
        if checks.wanted(name):
            print(f"skip {name}: needs {pkg}", flush=True)
    checks.run("device", lambda: check_device(ctx))
    specs = {"feat_logmel": LOGMEL,
             "feat_hf_mean": "hf:model={hf},layer=-1,pooling=mean",
             "feat_hf_frames": "hf:model={hf},layer=-1,pooling=none",
             "feat_whisper_mean": "whisper:model={wh},backend=torch,layer=-1,pooling=mean",
             "feat_whisper_frames": "whisper:model={wh},backend=torch,layer=1,pooling=none"}
    for name, spec in specs.items():
        def feat(spec: str = spec) -> str:
            models = {"hf": ctx.hf_model() if "{hf}" in spec else "",
                      "wh": ctx.whisper_model() if "{wh}" in spec else ""}
            return compare_extraction(ctx, spec.format(**models))
        checks.run(name, feat)
    method_checks(ctx, checks)
    checks.run("cli_train_predict", lambda: check_cli(ctx))
    checks.run("deep_wccn_ssl", lambda: check_ssl(ctx))
    checks.run("repeat_seeded_fit", lambda: check_repeat(ctx))


def quiet_libraries() -> None:
    """No progress bars from transformers; the random-VGG warning once is expected."""
    import warnings

    import transformers

    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="vgg: no ImageNet weights")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, cpu... (default cuda)")
    parser.add_argument("--out", type=Path, required=True, help="folder for cuda_check.json")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only the checks matching these shell-style patterns")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)
    quiet_libraries()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    checks = Checks(args.only)
    with tempfile.TemporaryDirectory(prefix="cuda_check_") as tmp:
        run_all(Context(args.device, Path(tmp)), checks)
    total = time.perf_counter() - start
    failed = [r["name"] for r in checks.results if not r["ok"]]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "cuda_check.json", {
        "device": args.device, "torch": torch.__version__,
        "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0)
        if torch.cuda.is_available() else None, "total_s": round(total, 2),
        "failed": failed, "results": checks.results})
    print(f"total {total:.1f}s: {len(checks.results) - len(failed)} ok, {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
