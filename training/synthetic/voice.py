"""Source-filter speech synthesis for the synthetic corpus (numpy only, no scipy).

``synth_speech`` turns one clip's effective cue values (see ``avemo.training.synthetic.corpus.CUES``) and an
actor's voice identity into a mono waveform, plus a control-rate *track* (speech energy envelope,
jaw opening and lip rounding per vowel) that drives the lip movement of the rendered face.

Pipeline:
    syllable timing (statement pattern / tempo) -> f0 contour (declination, stress accents, tremor)
    -> per-period jitter + shimmer -> Rosenberg glottal-flow-derivative pulses (open quotient sets
    pressed/breathy quality) + aspiration noise -> STFT-domain vocal-tract filter (cascade of 4
    formant resonances per syllable vowel, spectral tilt) -> consonant noise bursts -> RMS level set
    by the emotion's energy factor (loudness carries the cue) -> background noise.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

CONTROL_RATE = 1000  # Hz: envelopes and contours are built on this grid, then interpolated

# Vowel formants F1..F4 (Hz) of an adult male vocal tract; scaled by the actor's tract factor.
VOWELS: dict[str, tuple[float, float, float, float]] = {
    "i": (280.0, 2250.0, 2900.0, 3600.0),
    "e": (500.0, 1750.0, 2500.0, 3500.0),
    "a": (720.0, 1150.0, 2450.0, 3500.0),
    "o": (560.0, 900.0, 2400.0, 3400.0),
    "u": (320.0, 880.0, 2250.0, 3400.0),
    "@": (500.0, 1450.0, 2450.0, 3500.0),
}
BANDWIDTHS = (80.0, 100.0, 140.0, 200.0)  # formant bandwidths (Hz)
FORMANT_GAINS = (1.0, 0.7, 0.45, 0.3)  # peak gains of the parallel formant resonances
VOWEL_JAW = {"i": 0.45, "e": 0.70, "a": 1.00, "o": 0.80, "u": 0.45, "@": 0.60}  # jaw opening (video)
VOWEL_ROUND = {"i": 0.0, "e": 0.0, "a": 0.0, "o": 0.6, "u": 1.0, "@": 0.1}  # lip rounding (video)

# Syllable patterns of the two RAVDESS statements. Both have 7 syllables (as the real sentences do);
# they differ in syllable durations, stress pattern, vowels, consonant bursts and pause positions.
# Fields: duration at tempo 1 (s), stress 0..1, vowel, onset consonant noise, coda noise, gap after (s)
STATEMENT_SYLLABLES: dict[int, tuple[tuple[float, float, str, float, float, float], ...]] = {
    1: (  # "Kids are talk-ing by the door"
        (0.24, 1.00, "i", 0.9, 0.8, 0.05),  # kids
        (0.15, 0.40, "a", 0.0, 0.0, 0.02),  # are
        (0.22, 0.85, "o", 0.8, 0.0, 0.00),  # talk
        (0.17, 0.35, "i", 0.6, 0.0, 0.09),  # -ing
        (0.21, 0.60, "a", 0.4, 0.0, 0.02),  # by
        (0.11, 0.25, "@", 0.5, 0.0, 0.01),  # the
        (0.38, 0.80, "o", 0.5, 0.0, 0.00),  # door
    ),
    2: (  # "Dogs are sit-ting by the door"
        (0.30, 1.00, "o", 0.5, 0.7, 0.06),  # dogs
        (0.13, 0.35, "a", 0.0, 0.0, 0.02),  # are
        (0.21, 0.95, "i", 1.0, 0.0, 0.00),  # sit
        (0.16, 0.40, "i", 0.7, 0.0, 0.12),  # -ting
        (0.19, 0.50, "a", 0.4, 0.0, 0.02),  # by
        (0.10, 0.25, "@", 0.5, 0.0, 0.01),  # the
        (0.42, 0.90, "o", 0.5, 0.0, 0.00),  # door
    ),
}

MIN_SECONDS, MAX_SECONDS = 3.1, 3.95  # clip duration range (RAVDESS clips are 3-4 s)
BASE_RMS = 0.055  # RMS of active speech for energy factor 1.0


def voice_identity(rng: np.random.Generator, male: bool) -> dict:
    """An actor's voice: base pitch (males lower), vocal tract length, speaking rate, timbre."""
    return {
        "f0": float((115.0 if male else 205.0) * np.exp(rng.normal(0.0, 0.10))),
        "tract": float((1.0 if male else 1.16) * np.exp(rng.normal(0.0, 0.03))),
        "rate": float(np.exp(rng.normal(0.0, 0.07))),
        "loud": float(np.exp(rng.normal(0.0, 0.08))),
        "tilt": float(rng.normal(0.0, 1.0)),  # dB/octave added to the emotion's tilt
        "breath": float(np.exp(rng.normal(0.0, 0.2))),
        "jitter": float(np.exp(rng.normal(0.0, 0.15))),
    }


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _moving_average(x: np.ndarray, n: int) -> np.ndarray:
    if n <= 1:
        return x
    k = np.ones(n) / n
    return np.convolve(np.pad(x, (n // 2, n - 1 - n // 2), mode="edge"), k, mode="valid")


def _period_noise(rng: np.random.Generator, t: np.ndarray, rate: float) -> np.ndarray:
    """Standard-normal noise held constant over each (mean) pitch period: jitter / shimmer source."""
    idx = (t * rate).astype(np.int64)
    return rng.standard_normal(int(idx[-1]) + 1)[idx]


def _glottal_derivative(p: np.ndarray, oq: float) -> np.ndarray:
    """Rosenberg glottal flow derivative at phase p in [0, 1). Lower open quotient = pressed, brighter."""
    tp, tn = 0.62 * oq, 0.38 * oq
    opening = (np.pi / (2 * tp)) * np.sin(np.pi * np.minimum(p, tp) / tp)
    closing = -(np.pi / (2 * tn)) * np.sin(np.pi * np.clip(p - tp, 0.0, tn) / (2 * tn))
    return np.where(p < tp, opening, np.where(p < tp + tn, closing, 0.0))


def _stft_filter(x: np.ndarray, gains: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Apply a time-varying magnitude response ``gains`` [frames, n_fft//2+1] by sqrt-Hann STFT/OLA."""
    win = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft))
    n_frames = gains.shape[0]
    xp = np.zeros((n_frames + 3) * hop + n_fft)
    xp[n_fft : n_fft + len(x)] = x
    frames = sliding_window_view(xp, n_fft)[::hop][:n_frames] * win
    out = np.fft.irfft(np.fft.rfft(frames, axis=1) * gains, n=n_fft, axis=1) * win
    k = n_fft // hop
    blocks = out.reshape(n_frames, k, hop)
    y = np.zeros((n_frames + k, hop))
    for j in range(k):
        y[j : j + n_frames] += blocks[:, j]
    y = y.ravel() * (2.0 / k)  # sum of hann^2... periodic hann with hop n/k sums to k/2
    return y[n_fft : n_fft + len(x)]


def _n_stft_frames(n: int, n_fft: int, hop: int) -> int:
    return (n + 2 * n_fft) // hop


def synth_speech(
    cues: dict, voice: dict, statement: int, rng: np.random.Generator, sample_rate: int, fps: int
) -> tuple[np.ndarray, dict]:
    """Synthesise one spoken statement. Returns (audio float32 [N] in [-1, 1], track dict).

    The clip lasts ``n_frames / fps`` seconds (3.1-3.95 s), ``N = n_frames * sample_rate / fps``.
    """
    sr = sample_rate
    pattern = STATEMENT_SYLLABLES[statement]
    # ---- timing: tempo = emotion x actor x per-clip jitter; syllable durations jittered
    tempo = cues["tempo"] * voice["rate"] * np.exp(rng.normal(0.0, 0.03))
    n_syl = len(pattern)
    durs = np.array([s[0] for s in pattern]) * np.exp(rng.normal(0.0, 0.06, n_syl)) / tempo
    gaps = np.array([s[5] for s in pattern]) * np.exp(rng.normal(0.0, 0.10, n_syl)) / tempo
    stress = np.clip(np.array([s[1] for s in pattern]) + rng.normal(0.0, 0.05, n_syl), 0.1, 1.0)
    speech_len = float(durs.sum() + gaps[:-1].sum())
    lead = rng.uniform(0.25, 0.5)
    dur = max(rng.uniform(MIN_SECONDS + 0.05, 3.55), lead + speech_len + 0.3)
    if dur > MAX_SECONDS:
        dur = MAX_SECONDS
        lead = max(0.08, MAX_SECONDS - speech_len - 0.2)
    n_frames = int(round(dur * fps))
    dur = n_frames / fps
    n = n_frames * sr // fps
    starts = lead + np.concatenate([[0.0], np.cumsum(durs + gaps)[:-1]])
    ends = starts + durs
    centres = 0.5 * (starts + ends)

    # ---- control-rate envelopes (1 kHz)
    tc = np.arange(int(dur * CONTROL_RATE) + 1) / CONTROL_RATE
    env = np.zeros_like(tc)
    cons = np.zeros_like(tc)
    for k, (s, e) in enumerate(zip(starts, ends)):
        shape = np.minimum(_smoothstep((tc - s) / 0.035), _smoothstep((e - tc) / 0.06))
        env = np.maximum(env, (0.5 + 0.5 * stress[k]) * shape)
        onset, coda = pattern[k][3], pattern[k][4]
        if onset > 0:
            cons = np.maximum(cons, onset * _smoothstep(1.0 - np.abs(tc - (s - 0.015)) / 0.035))
        if coda > 0:
            cons = np.maximum(cons, coda * _smoothstep(1.0 - np.abs(tc - (e + 0.04)) / 0.06))
    vowels = [s[2] for s in pattern]
    key_t = np.ravel(np.column_stack([starts + 0.3 * durs, ends - 0.3 * durs]))
    jaw = np.interp(tc, key_t, np.repeat([VOWEL_JAW[v] for v in vowels], 2))
    rounding = np.interp(tc, key_t, np.repeat([VOWEL_ROUND[v] for v in vowels], 2))

    # ---- pitch contour (semitones): declination + stress accents scaled by the emotion's range
    pos = (centres - centres[0]) / max(centres[-1] - centres[0], 1e-3)
    accents = cues["f0_range"] * (stress * rng.uniform(0.75, 1.0, n_syl) - 0.5)
    semis = np.interp(tc, centres, -2.0 * pos + accents)
    semis = _moving_average(semis, int(0.08 * CONTROL_RATE))
    semis = semis + cues["tremor"] * np.sin(2 * np.pi * rng.uniform(5.0, 6.5) * tc + rng.uniform(0, 2 * np.pi))
    f0_mean = voice["f0"] * cues["f0"] * np.exp(rng.normal(0.0, 0.02))
    f0c = f0_mean * 2.0 ** (semis / 12.0)

    # ---- excitation at audio rate
    ta = np.arange(n) / sr
    f0a = np.interp(ta, tc, f0c)
    enva = np.interp(ta, tc, env)
    jitter = cues["jitter"] * voice["jitter"]
    inst = f0a * (1.0 + jitter * _period_noise(rng, ta, f0_mean))
    phase = np.cumsum(inst) / sr
    p = phase - np.floor(phase)
    oq = float(np.clip(cues["oq"], 0.3, 0.85))
    glot = _glottal_derivative(p, oq)
    glot /= np.sqrt(np.mean(glot**2)) + 1e-9
    glot *= 1.0 + cues["shimmer"] * _period_noise(rng, ta, f0_mean)
    aspiration = rng.standard_normal(n) * np.where(p < oq, 1.0, 0.4)
    src = (glot + cues["breath"] * voice["breath"] * aspiration) * enva

    # ---- vocal tract: 4 parallel formant resonances + spectral tilt, per STFT frame
    n_fft, hop = 1024, 256
    nfr = _n_stft_frames(n, n_fft, hop)
    t_fr = (np.arange(nfr) * hop + n_fft / 2 - n_fft) / sr
    f = np.fft.rfftfreq(n_fft, 1.0 / sr)[None, :]
    gains = np.full((nfr, f.shape[1]), 0.03)  # parallel formant bank: floor + 4 resonance peaks
    for i in range(4):
        track = np.repeat([VOWELS[v][i] for v in vowels], 2) * voice["tract"] * cues["formant"]
        fi = np.interp(t_fr, key_t, track)[:, None]
        gains += FORMANT_GAINS[i] / np.sqrt(1.0 + ((f - fi) / (0.5 * BANDWIDTHS[i])) ** 2)
    tilt = cues["tilt"] + voice["tilt"]  # dB / octave relative to 1 kHz
    gains *= (np.maximum(f, 150.0) / 1000.0) ** (tilt / 6.02)
    gains *= _smoothstep((f - 60.0) / 60.0)  # remove DC / sub-bass
    voiced = _stft_filter(src, gains, n_fft, hop)

    # ---- consonant noise bursts (high-passed white noise)
    noise = rng.standard_normal(n + 1)
    noise = noise[1:] - 0.85 * noise[:-1]
    active = enva > 0.3
    v_rms = np.sqrt(np.mean(voiced[active] ** 2)) + 1e-9
    speech = voiced + 0.35 * v_rms * noise * np.interp(ta, tc, cons)

    # ---- level: RMS of active speech follows the emotion's energy factor (loudness is a cue)
    target = BASE_RMS * cues["energy"] * voice["loud"] * np.exp(rng.normal(0.0, 0.06))
    speech *= target / (np.sqrt(np.mean(speech[active] ** 2)) + 1e-9)
    snr_db = rng.uniform(28.0, 42.0)
    speech += rng.standard_normal(n) * target * 10 ** (-snr_db / 20.0)
    peak = np.max(np.abs(speech))
    if peak > 0.95:  # soft limiter only where needed
        speech = 0.95 * np.tanh(speech / 0.95)
    track = {
        "t": tc,
        "env": env / max(env.max(), 1e-9),
        "jaw": jaw,
        "round": rounding,
        "duration": dur,
        "n_frames": n_frames,
        "f0_mean": float(f0_mean),
        "tempo": float(tempo),
        "speech_start": float(starts[0]),
        "speech_end": float(ends[-1]),
        "rms": float(target),
    }
    return speech.astype(np.float32), track
