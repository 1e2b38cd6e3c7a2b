"""Generic VAE runners around exported coder graphs, chosen by what a family's manifest declares.

- ``run_chunks``: a batch of frames in chunks of the exported size, the shorter last chunk through
  its own "tail" graph (SVD, ModelScope, I2VGen-XL, AnimateDiff: 2D VAEs, ``decode_chunk_size``).
- ``run_causal``: a video cut into frame batches; every causal conv's cache comes out of one graph
  call and goes into the next (CogVideoX's VAE, whose graphs hold no state).
- ``stitch_tiles``: spatial tiling on top of either, blended over the overlaps as diffusers does.
- ``sample_tiles``: spatial tiling in sample units (HunyuanVideo's and LTX-Video's ``tiled_decode``).
- ``temporal_tiles``: framewise (temporal) tiling with blending (HunyuanVideo, LTX-Video);
  ``framewise_decode`` composes it with ``sample_tiles`` as their ``_decode`` does, and
  ``decode_tile_shapes`` lists the latent tiles it decodes (one exported graph each).

Every function takes the coder as a plain callable, so a pipeline composes them (spatial tiles of
causal batches, temporal tiles of spatial tiles, ...) without knowing a graph.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32


def run_chunks(code, x: np.ndarray, chunk: int):
    """x [N, ...] -> the coder's outputs joined along axis 0. ``code(part, is_tail)`` codes one
    chunk: ``chunk`` items, or the last N mod chunk (``is_tail``)."""
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    outputs = []
    for start in range(0, x.shape[0], chunk):
        part = np.ascontiguousarray(x[start:start + chunk])
        outs = code(part, part.shape[0] != chunk)
        outputs.append(outs if isinstance(outs, tuple) else (outs,))
    return tuple(np.concatenate(parts) for parts in zip(*outputs))


def run_causal(first, following, x: np.ndarray, batches: list, axis: int = 2) -> np.ndarray:
    """x cut along ``axis`` into ``batches`` ([{"start", "end"}, ...] as the manifest lists them).
    ``first(part) -> (out, *caches)``, ``following(part, *caches) -> (out, *caches)``; the outputs
    are joined along ``axis``."""
    outputs, caches = [], ()
    for k, batch in enumerate(batches):
        index = [slice(None)] * x.ndim
        index[axis] = slice(batch["start"], batch["end"])
        part = np.ascontiguousarray(x[tuple(index)])
        outs = first(part) if k == 0 else following(part, *caches)
        outputs.append(outs[0])
        caches = tuple(outs[1:])
    return np.concatenate(outputs, axis)


def blend(a: np.ndarray, b: np.ndarray, extent: int, axis: int) -> np.ndarray:
    """diffusers' blend_v / blend_h / blend_t on ``axis``: the first ``extent`` slices of b fade in
    from a's last ones. Writes into b (diffusers blends in place) and returns it."""
    extent = min(a.shape[axis], b.shape[axis], extent)
    for y in range(extent):
        src = [slice(None)] * b.ndim
        dst = [slice(None)] * b.ndim
        src[axis] = -extent + y
        dst[axis] = y
        b[tuple(dst)] = a[tuple(src)] * F32(1 - y / extent) + b[tuple(dst)] * F32(y / extent)
    return b


def stitch_tiles(tiling: dict, code) -> np.ndarray:
    """diffusers' tiled_encode / tiled_decode once the tiles are coded: ``code(tile)`` gives each tile
    of ``tiling["tiles"]`` (row-major, [B, C, F, h, w] outputs); each is blended with the tile above
    and the one to its left, cropped to the row limits and stitched."""
    tiles = iter(tiling["tiles"])
    rows = [[code(next(tiles)) for _ in range(tiling["cols"])] for _ in range(tiling["rows"])]
    result_rows = []
    for i, row in enumerate(rows):
        result_row = []
        for j, tile in enumerate(row):
            tile = tile.copy()
            if i > 0:
                tile = blend(rows[i - 1][j], tile, tiling["blend_extent_height"], axis=3)
            if j > 0:
                tile = blend(row[j - 1], tile, tiling["blend_extent_width"], axis=4)
            row[j] = tile  # later tiles see the blended neighbours, as in diffusers
            result_row.append(tile[:, :, :, :tiling["row_limit_height"], :tiling["row_limit_width"]])
        result_rows.append(np.concatenate(result_row, 4))
    return np.concatenate(result_rows, 3)


def sample_tiles(z: np.ndarray, code, tile: tuple, stride: tuple, ratio: int) -> np.ndarray:
    """diffusers' ``tiled_decode`` of the video VAEs that tile in sample units (HunyuanVideo, LTX-Video):
    latent tiles of ``tile // ratio`` every ``stride // ratio`` (height, width), each coded by
    ``code(z_tile)``, blended over ``tile - stride`` pixels, cropped to ``stride`` and stitched, the
    result cropped to the latents' size times ``ratio``."""
    height, width = z.shape[-2:]
    (tile_h, tile_w), (step_h, step_w) = (t // ratio for t in tile), (s // ratio for s in stride)
    grid = {
        "rows": len(range(0, height, step_h)), "cols": len(range(0, width, step_w)),
        "tiles": [(i, j) for i in range(0, height, step_h) for j in range(0, width, step_w)],
        "blend_extent_height": tile[0] - stride[0], "blend_extent_width": tile[1] - stride[1],
        "row_limit_height": stride[0], "row_limit_width": stride[1],
    }
    out = stitch_tiles(grid, lambda ij: code(np.ascontiguousarray(
        z[..., ij[0]:ij[0] + tile_h, ij[1]:ij[1] + tile_w])))
    return out[..., :height * ratio, :width * ratio]


def temporal_tile_starts(latent_frames: int, tile_sample_frames: int, stride_sample_frames: int, ratio: int) -> list:
    """(start, end) latent-frame ranges of diffusers' framewise decode: tiles of
    ``tile_sample_frames // ratio + 1`` latent frames every ``stride_sample_frames // ratio``. The
    export needs one decoder graph per distinct tile length."""
    tile = tile_sample_frames // ratio
    stride = stride_sample_frames // ratio
    if latent_frames <= tile:  # diffusers decodes these in one call, without the tiled loop
        return [(0, latent_frames)]
    return [(i, min(i + tile + 1, latent_frames)) for i in range(0, latent_frames, stride)]


DROP_FRAMES = ("first", "last")


def temporal_tiles(z: np.ndarray, decode, tile_sample_frames: int, stride_sample_frames: int, ratio: int,
                   drop_frame: str = "first") -> np.ndarray:
    """diffusers' ``_temporal_tiled_decode``: z [B, C, F, h, w] -> frames [B, 3, (F - 1) * ratio + 1, H, W].
    ``decode(z_tile)`` decodes one tile of latent frames (itself possibly spatially tiled); each tile
    after the first loses one decoded frame (``drop_frame``: its first in HunyuanVideo, its last in
    LTX-Video) and fades in from the previous tile over tile - stride frames."""
    if drop_frame not in DROP_FRAMES:
        raise ValueError(f"drop_frame={drop_frame!r}; choose one of {DROP_FRAMES}")
    num_sample_frames = (z.shape[2] - 1) * ratio + 1
    blend_frames = tile_sample_frames - stride_sample_frames
    row = []
    for k, (start, end) in enumerate(temporal_tile_starts(z.shape[2], tile_sample_frames, stride_sample_frames,
                                                          ratio)):
        decoded = decode(np.ascontiguousarray(z[:, :, start:end]))
        if k > 0:
            decoded = decoded[:, :, 1:] if drop_frame == "first" else decoded[:, :, :-1]
        row.append(decoded)
    result = []
    for k, tile in enumerate(row):
        if k > 0:
            tile = row[k] = blend(row[k - 1], tile, blend_frames, axis=2)  # in place, as diffusers
            result.append(tile[:, :, :stride_sample_frames])
        else:
            result.append(tile[:, :, :stride_sample_frames + 1])
    return np.concatenate(result, 2)[:, :, :num_sample_frames]


def _spatial_grid(tiling: dict):
    return ((tiling["tile_sample_min_height"], tiling["tile_sample_min_width"]),
            (tiling["tile_sample_stride_height"], tiling["tile_sample_stride_width"]))


def _larger_than_tile(height: int, width: int, tile: tuple, spatial: int) -> bool:
    return height > tile[0] // spatial or width > tile[1] // spatial


def framewise_decode(z: np.ndarray, decode, tiling: dict, spatial: int, temporal: int,
                     use_tiling: bool = False, use_framewise: bool = True, drop_frame: str = "first") -> np.ndarray:
    """diffusers' ``_decode`` of the video VAEs that tile in sample units: with ``use_framewise``
    (HunyuanVideo's default; LTX-Video's ``vae.use_framewise_decoding``) latents longer than one
    temporal tile go through :func:`temporal_tiles`; with ``use_tiling`` (``enable_tiling()``) each
    part larger than one spatial tile goes through :func:`sample_tiles`. ``tiling`` holds diffusers'
    ``tile_sample_min_*`` and ``tile_sample_stride_*`` (height, width, num_frames)."""
    tile, stride = _spatial_grid(tiling)

    def one(part):
        if use_tiling and _larger_than_tile(part.shape[3], part.shape[4], tile, spatial):
            return sample_tiles(part, decode, tile, stride, spatial)
        return decode(part)

    if use_framewise and z.shape[2] > tiling["tile_sample_min_num_frames"] // temporal:
        return temporal_tiles(z, one, tiling["tile_sample_min_num_frames"], tiling["tile_sample_stride_num_frames"],
                              temporal, drop_frame)
    return one(z)


def decode_tile_shapes(latent_frames: int, height: int, width: int, tiling: dict, spatial: int, temporal: int,
                       use_tiling: bool = False, use_framewise: bool = True) -> list:
    """The (frames, height, width) latent tiles :func:`framewise_decode` hands its ``decode`` for
    latents of that size with those switches, sorted: an export needs one decoder graph per shape."""
    tile, stride = _spatial_grid(tiling)
    if use_framewise and latent_frames > tiling["tile_sample_min_num_frames"] // temporal:
        lengths = {end - start for start, end in temporal_tile_starts(
            latent_frames, tiling["tile_sample_min_num_frames"], tiling["tile_sample_stride_num_frames"], temporal)}
    else:
        lengths = {latent_frames}
    if use_tiling and _larger_than_tile(height, width, tile, spatial):
        hs = {min(tile[0] // spatial, height - i) for i in range(0, height, stride[0] // spatial)}
        ws = {min(tile[1] // spatial, width - j) for j in range(0, width, stride[1] // spatial)}
    else:
        hs, ws = {height}, {width}
    return sorted((t, th, tw) for t in lengths for th in hs for tw in ws)
