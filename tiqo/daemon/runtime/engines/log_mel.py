"""Whisper's log-mel spectrogram a block of frames at a time, so its memory follows the audio, not 13 times it.

faster-whisper's ``FeatureExtractor`` builds the whole STFT at once: every frame's windowed samples (2.5 times the
audio), their spectrum and a complex64 copy of it (2.5 times each), then the magnitudes. Measured with faster-whisper
1.2.1: 30 minutes of audio (110 MB) peaked at 1.5 GB; 16 bytes held per byte of audio. ``BlockLogMel`` computes the
same features (the same formula frame by frame; only the final clamp to 8 below the maximum needs them all, and it
runs on the small result) holding one block's STFT at a time: 1.5 bytes per byte of audio, plus ~35 MB.

numpy only, imported by the Whisper runner when a model loads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BLOCK_FRAMES = 3000  # frames per STFT block (30 s, a window of Whisper's): ~35 MB of FFT work at once


class BlockLogMel:
    """A drop-in for a faster-whisper ``FeatureExtractor`` (its filters and sizes are read from ``inner``)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:  # n_samples, nb_max_frames, time_per_frame, sampling_rate, ...
        return getattr(self._inner, name)

    def __call__(self, waveform: Any, padding: int = 160, chunk_length: int | None = None) -> Any:
        inner = self._inner
        if chunk_length is not None:  # as the original: the window length for the decoding that follows
            inner.n_samples = chunk_length * inner.sampling_rate
            inner.nb_max_frames = inner.n_samples // inner.hop_length
        frames = _frames(np.asarray(waveform, dtype=np.float32), padding, inner.n_fft, inner.hop_length)
        window = np.hanning(inner.n_fft + 1)[:-1].astype(np.float32)
        count = frames.shape[0] - 1  # the last frame is dropped, as the original does
        out = np.empty((inner.mel_filters.shape[0], max(0, count)), dtype=np.float32)
        for start in range(0, count, BLOCK_FRAMES):
            stop = min(start + BLOCK_FRAMES, count)
            spectrum = np.fft.rfft(frames[start:stop] * window, n=inner.n_fft, axis=-1).astype(np.complex64, copy=False)
            magnitudes = np.abs(spectrum.T)
            magnitudes **= 2
            out[:, start:stop] = np.log10(np.clip(inner.mel_filters @ magnitudes, a_min=1e-10, a_max=None))
        if out.size:
            np.maximum(out, out.max() - 8.0, out=out)
        out += 4.0
        out /= 4.0
        return out


def _frames(waveform: Any, padding: int, n_fft: int, hop: int) -> Any:
    """A strided view of the STFT's frames over one copy of the waveform, laid out as the original pads it: zeros
    after it (``padding``), then half a window reflected at each end (``np.pad(mode="reflect")``)."""
    half, length = n_fft // 2, waveform.size + padding
    if length <= half:  # too short to reflect in one go: numpy's padding repeats the reflection
        padded = np.pad(np.pad(waveform, (0, padding)), half, mode="reflect")
    else:
        padded = np.zeros(length + 2 * half, dtype=np.float32)
        padded[half : half + waveform.size] = waveform
        body = padded[half : half + length]
        padded[:half] = body[half:0:-1]
        padded[half + length :] = body[-2 : -2 - half : -1]
    count = 1 + (padded.size - n_fft) // hop
    stride = padded.strides[0]
    return np.lib.stride_tricks.as_strided(padded, (count, n_fft), (hop * stride, stride), writeable=False)
