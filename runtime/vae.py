"""Generic VAE runners around exported coder graphs, chosen by what a family's manifest declares.

- ``run_chunks``: a batch of frames in chunks of the exported size, the shorter last chunk through
  its own "tail" graph (SVD, ModelScope, I2VGen-XL, AnimateDiff: 2D VAEs, ``decode_chunk_size``).
- ``run_causal``: a video cut into frame batches; every causal conv's cache comes out of one graph
  call and goes into the next (CogVideoX's VAE, whose graphs hold no state).
- ``stitch_tiles``: spatial tiling on top of either, blended over the overlaps as diffusers does.
- ``sample_tiles``: spatial tiling in sample units (HunyuanVideo's and LTX-Video's ``tiled_decode``).
- ``temporal_tiles``: framewise (temporal) tiling with blending (HunyuanVideo, LTX-Video);
  ``framewise_decode`` composes it with ``sample_tiles`` as HunyuanVideo's ``_decode`` does.

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
    if latent_frames <= tile:  # diffusers decodes these in one call (the tiled loop gives the same frames)
        return [(0, latent_frames)]
    return [(i, min(i + tile + 1, latent_frames)) for i in range(0, latent_frames, stride)]


def temporal_tiles(z: np.ndarray, decode, tile_sample_frames: int, stride_sample_frames: int, ratio: int) -> np.ndarray:
    """diffusers' ``_temporal_tiled_decode`` (HunyuanVideo): z [B, C, F, h, w] -> frames
    [B, 3, (F - 1) * ratio + 1, H, W]. ``decode(z_tile)`` decodes one tile of latent frames (itself
    possibly spatially tiled); each tile after the first drops its first frame and fades in from the
    previous tile over tile - stride frames."""
    num_sample_frames = (z.shape[2] - 1) * ratio + 1
    blend_frames = tile_sample_frames - stride_sample_frames
    row = []
    for k, (start, end) in enumerate(temporal_tile_starts(z.shape[2], tile_sample_frames, stride_sample_frames,
                                                          ratio)):
        decoded = decode(np.ascontiguousarray(z[:, :, start:end]))
        row.append(decoded[:, :, 1:] if k > 0 else decoded)
    result = []
    for k, tile in enumerate(row):
        if k > 0:
            tile = row[k] = blend(row[k - 1], tile, blend_frames, axis=2)  # in place, as diffusers
            result.append(tile[:, :, :stride_sample_frames])
        else:
            result.append(tile[:, :, :stride_sample_frames + 1])
    return np.concatenate(result, 2)[:, :, :num_sample_frames]


def framewise_decode(z: np.ndarray, decode, tiling: dict, spatial: int, temporal: int,
                     use_tiling: bool = False) -> np.ndarray:
    """diffusers' ``_decode`` of the VAEs with framewise decoding on by default (HunyuanVideo): latents
    longer than one temporal tile go through :func:`temporal_tiles`; after ``enable_tiling()`` each
    part larger than one spatial tile goes through :func:`sample_tiles`. ``tiling`` holds diffusers'
    ``tile_sample_min_*`` and ``tile_sample_stride_*`` (height, width, num_frames)."""
    tile = (tiling["tile_sample_min_height"], tiling["tile_sample_min_width"])
    stride = (tiling["tile_sample_stride_height"], tiling["tile_sample_stride_width"])
    big = use_tiling and (z.shape[3] > tile[0] // spatial or z.shape[4] > tile[1] // spatial)

    def one(part):
        return sample_tiles(part, decode, tile, stride, spatial) if big else decode(part)

    return temporal_tiles(z, one, tiling["tile_sample_min_num_frames"], tiling["tile_sample_stride_num_frames"],
                          temporal)
