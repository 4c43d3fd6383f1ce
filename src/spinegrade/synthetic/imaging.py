"""Image formation for the synthetic spine: per-sequence contrast and scanner effects.

Each series draws one ``Scanner`` (``draw_scanner``):

- sequence: Sagittal T1 -> "T1"; Axial T2 -> "T2"; Sagittal T2/STIR -> "T2", or "STIR"
  (fat suppressed) in STIR_RATE of series. Contrast is TISSUE[sequence] (tissue ->
  intensity in [0, 1]) mixed with a proton-density table by up to 0.2 (a different TR/TE;
  fat stays suppressed on STIR),
  raised to a gamma exp(N(0, 0.12)) and with a per-tissue gain exp(N(0, 0.04));
- resolution: a Gaussian point spread of U(0.35, 0.6 + 0.3) pixels sd;
- coil bias: exp(b * (y - y0) / 100 mm) (posterior coil, b ~ U(0, 0.35)) times a random
  smooth quadratic in the image coordinates (coefficients sd 0.12);
- noise: Rician, sd noise_sigma * U(0.7, 1.3) of the [0, 1] intensity scale;
- artifacts in ARTIFACT_RATE of series: motion ghosts (shifted copies along the phase
  axis) or motion blur along it;
- timing: the RepetitionTime, EchoTime (and, for STIR, InversionTime) a scanner writes for
  its sequence, uniform in TIMING_MS's ranges, drawn from a child of the series' generator
  (``rng.spawn``), so that adding them left every other draw, and so every pixel, as it was.

Every spread above (and ARTIFACT_RATE, and the noise sd) is multiplied by the
``difficulty`` knob: 0 gives clean images with one fixed contrast, 1 is the default, 2
doubles them. A slice is rendered once on its own grid (``anatomy.render_slice``, which
models partial volume across the slice thickness), then degraded (``form_image``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from spinegrade.core import vocab
from spinegrade.synthetic.anatomy import Anatomy, SliceGrid, render_slice

# Tissue intensities per sequence in [0, 1]. T1: fat > marrow > muscle ~ disc > CSF;
# T2: CSF > nucleus ~ fat > marrow > muscle; STIR: fat and marrow suppressed. Cortex,
# annulus and ligament are dark on all.
TISSUE: dict[str, dict[str, float]] = {
    "T1": {
        "fat": 0.95, "marrow": 0.68, "bone": 0.55, "soft": 0.40, "nucleus": 0.36,
        "muscle": 0.30, "nerve": 0.33, "annulus": 0.26, "ligament": 0.18, "fluid": 0.15,
        "csf": 0.12, "cortex": 0.05, "vessel": 0.05,
    },
    "T2": {
        "csf": 1.0, "fluid": 0.85, "nucleus": 0.78, "fat": 0.62, "marrow": 0.42,
        "bone": 0.36, "soft": 0.32, "nerve": 0.30, "muscle": 0.20, "annulus": 0.15,
        "ligament": 0.10, "cortex": 0.04, "vessel": 0.04,
    },
    "STIR": {
        "csf": 1.0, "fluid": 0.9, "nucleus": 0.7, "nerve": 0.32, "soft": 0.30,
        "muscle": 0.18, "marrow": 0.14, "bone": 0.13, "annulus": 0.14, "fat": 0.07,
        "ligament": 0.08, "cortex": 0.04, "vessel": 0.04,
    },
}  # fmt: skip

# Proton-density-like table that each series' contrast is partly mixed with.
PROTON_DENSITY = {
    "fat": 0.85, "marrow": 0.7, "bone": 0.6, "soft": 0.5, "nucleus": 0.7, "muscle": 0.42,
    "nerve": 0.5, "annulus": 0.3, "ligament": 0.2, "fluid": 0.7, "csf": 0.72, "cortex": 0.05,
    "vessel": 0.04,
}  # fmt: skip

STIR_RATE = 0.3

# Sequence timing in ms, as MR headers carry it: (low, high) of a uniform draw per series
# and DICOM keyword. T1: short TR and TE; T2: long TR and TE; STIR: long TR, a short
# inversion time (fat nulled) and a moderate TE. The axial T2 series time as the T2 ones.
TIMING_MS: dict[str, dict[str, tuple[float, float]]] = {
    "T1": {"RepetitionTime": (400.0, 800.0), "EchoTime": (8.0, 20.0)},
    "T2": {"RepetitionTime": (2500.0, 5000.0), "EchoTime": (80.0, 120.0)},
    "STIR": {
        "RepetitionTime": (3000.0, 6000.0),
        "EchoTime": (30.0, 70.0),
        "InversionTime": (140.0, 180.0),
    },
}

ARTIFACT_RATE = 0.15


@dataclass(frozen=True)
class Scanner:
    """One series' acquisition.

    Attributes:
        sequence: "T1", "T2" or "STIR".
        contrast: tissue -> intensity.
        psf_px: sd of the Gaussian point spread, pixels.
        coil: posterior coil falloff, per 100 mm of y.
        bias: (5,) coefficients of the smooth bias (r, c, r^2, c^2, r*c), image coords in [-1, 1].
        noise: Rician noise sd on the [0, 1] scale.
        artifact: "", "ghost" or "blur".
        artifact_axis: 0 (rows) or 1 (columns): the phase-encoding axis.
        artifact_size: ghost shift (pixels) or blur sd (pixels).
        artifact_gain: ghost amplitude.
        scale: stored value of intensity 1.
        timing: DICOM keyword -> ms (RepetitionTime, EchoTime, InversionTime for STIR).
    """

    sequence: str
    contrast: dict[str, float]
    psf_px: float
    coil: float
    bias: np.ndarray
    noise: float
    artifact: str
    artifact_axis: int
    artifact_size: float
    artifact_gain: float
    scale: float
    timing: dict[str, float]


def sequence_of(description: str, rng: np.random.Generator) -> str:
    """The contrast a series of ``description`` has (a draw for Sagittal T2/STIR)."""
    if description == vocab.SAGITTAL_T1:
        return "T1"
    if description == vocab.SAGITTAL_T2 and rng.random() < STIR_RATE:
        return "STIR"
    return "T2"


def draw_timing(rng: np.random.Generator, sequence: str) -> dict[str, float]:
    """DICOM keyword -> ms of ``sequence``'s timing (TIMING_MS), rounded to 0.1 ms."""
    return {
        tag: round(float(rng.uniform(lo, hi)), 1) for tag, (lo, hi) in TIMING_MS[sequence].items()
    }


def draw_scanner(
    rng: np.random.Generator,
    description: str,
    difficulty: float,
    noise_sigma: float,
    sequence: str | None = None,
) -> Scanner:
    """Draw one series' acquisition (see the module docstring); ``sequence`` forces one."""
    d = float(difficulty)
    drawn = sequence_of(description, rng)
    sequence = sequence or drawn
    mix = float(rng.uniform(0.0, 0.2)) * min(d, 1.25)
    gamma = float(np.exp(rng.normal(0.0, 0.12 * d)))
    gains = np.exp(rng.normal(0.0, 0.04 * d, len(TISSUE[sequence])))
    pd = dict(PROTON_DENSITY)
    if sequence == "STIR":  # fat stays suppressed
        pd.update({t: TISSUE["STIR"][t] for t in ("fat", "marrow", "bone")})
    contrast = {
        t: float(((1 - mix) * v + mix * pd[t]) ** gamma * g)
        for (t, v), g in zip(TISSUE[sequence].items(), gains, strict=True)
    }
    artifact = ""
    if rng.random() < min(ARTIFACT_RATE * d, 0.6):
        artifact = "ghost" if rng.random() < 0.5 else "blur"
    return Scanner(
        sequence=sequence,
        contrast=contrast,
        psf_px=float(rng.uniform(0.35, 0.6 + 0.3 * d)),
        coil=float(rng.uniform(0.0, 0.35)) * d,
        bias=rng.normal(0.0, 0.12 * d, 5),
        noise=noise_sigma * d * float(rng.uniform(0.7, 1.3)),
        artifact=artifact,
        artifact_axis=int(rng.integers(2)),
        artifact_size=float(rng.uniform(4.0, 12.0) if artifact == "ghost" else rng.uniform(1, 2)),
        artifact_gain=float(rng.uniform(0.04, 0.1)),
        scale=float(rng.uniform(800, 2500)),
        # a child generator: its draws leave the series' own stream as it was
        timing=draw_timing(rng.spawn(1)[0], sequence),
    )


def texture_field(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(rows, cols) float32 zero-mean, unit-sd noise, smooth over about 2 pixels."""
    rows, cols = shape
    coarse = rng.standard_normal((rows // 2 + 1, cols // 2 + 1), dtype=np.float32)
    coarse = gaussian_filter(coarse, 0.8)
    coarse /= coarse.std() + 1e-6
    return np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)[:rows, :cols]


def form_image(
    anatomy: Anatomy, grid: SliceGrid, scanner: Scanner, rng: np.random.Generator
) -> np.ndarray:
    """(rows, cols) float32 image on the [0, 1] scale: render, point spread, coil bias,
    artifact, Rician noise."""
    rows, cols = grid.shape
    img = render_slice(anatomy, grid, scanner.contrast, texture_field(rng, grid.shape))
    img = gaussian_filter(img, scanner.psf_px)
    if scanner.artifact == "ghost":
        k = int(round(scanner.artifact_size))
        ghosts = np.roll(img, k, axis=scanner.artifact_axis)
        ghosts += np.roll(img, -k, axis=scanner.artifact_axis)
        img = img + 0.5 * scanner.artifact_gain * ghosts
    elif scanner.artifact == "blur":
        img = gaussian_filter1d(img, scanner.artifact_size, axis=scanner.artifact_axis)
    full = (0, rows, 0, cols)
    y = np.broadcast_to(grid.axis(1, full), (rows, cols))
    tr = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    tc = np.linspace(-1.0, 1.0, cols, dtype=np.float32)[None, :]
    b = scanner.bias
    log_bias = b[0] * tr + b[1] * tc + b[2] * tr * tr + b[3] * tc * tc + b[4] * tr * tc
    img = img * np.exp(log_bias + scanner.coil * (y - anatomy.y0) / 100.0)
    if scanner.noise > 0:
        n1 = rng.standard_normal(img.shape, dtype=np.float32)
        n2 = rng.standard_normal(img.shape, dtype=np.float32)
        img = np.sqrt((img + scanner.noise * n1) ** 2 + (scanner.noise * n2) ** 2)
    return img.astype(np.float32, copy=False)
