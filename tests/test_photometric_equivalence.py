"""The fast augmentation path against the reference recipe (PIL + torchvision, the release's SwAV
recipe).

Distributions (seeded, sampling tolerances): crop area and aspect ratio, flip rate, colour-jitter
probability, factor ranges and op order, grayscale and blur rates, blur sigma range.
Pixels for fixed parameters: resampling vs ``PIL.Image.resize(BILINEAR)`` of the same region
(interpolate: mean absolute error < 0.25 grey levels, i.e. rare +-1 roundings; roi_align:
< 2.5, it anti-aliases with a box instead of PIL's triangle filter); every photometric op vs
``torchvision.transforms.functional`` (blur: ``gaussian_blur`` with kernel size
2 ceil(3 sigma) + 1, and PIL's ``GaussianBlur(radius=sigma)`` of the release within 1.5 grey
levels); the loader-side vs model-side paths (equal up to uint8 rounding); the loader's numba
kernel vs the torch implementation and torchvision (equal up to uint8 rounding).
"""
import math
from collections import Counter
from itertools import permutations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter
from torchvision import transforms as T

from ssprl_d2.ops import photometric as P
from ssprl_d2.data import photometric_numba as PN
from ssprl_d2.data.crop_geometry import (
    resized_crop,
    resized_crops_roi_align,
    roi_resample,
    sample_resized_crop_box,
)
from ssprl_d2.data.pyramid_mapper import PyramidDatasetMapper


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph shipped with scikit-image (512 x 512 RGB)."""
    from skimage import data

    return data.astronaut()


def _mapper(**overrides) -> PyramidDatasetMapper:
    kwargs = dict(
        crop_sizes=[48, 24],
        num_crops=[2, 2],
        min_scales=[0.14, 0.05],
        max_scales=[1.0, 0.14],
        grids=[2, 3],
        pyramid_resize=[64, 72],
        pyramid_scales=[[0.6, 1.0], [0.6, 1.0]],
        patch_sizes=[24, 20],
    )
    kwargs.update(overrides)
    return PyramidDatasetMapper(**kwargs)


# ---------------------------------------------------------------------------- distributions
@pytest.mark.parametrize("scale", [(0.14, 1.0), (0.05, 0.14), (0.6, 1.0)])
def test_crop_area_and_aspect_match_random_resized_crop(scale):
    n, (h, w) = 3000, (480, 640)
    g = torch.Generator().manual_seed(0)
    ours = [sample_resized_crop_box(h, w, scale, (3 / 4, 4 / 3), g) for _ in range(n)]
    torch.manual_seed(0)
    ref = [T.RandomResizedCrop.get_params(torch.zeros(1, h, w), scale, (3 / 4, 4 / 3))
           for _ in range(n)]
    for boxes in (ours, ref):
        assert all(0 <= t and t + bh <= h and 0 <= lf and lf + bw <= w for t, lf, bh, bw in boxes)

    def stats(boxes):
        b = torch.tensor(boxes, dtype=torch.float64)
        area = b[:, 2] * b[:, 3] / (h * w)
        log_ratio = torch.log(b[:, 3] / b[:, 2])
        return area, log_ratio

    (a1, r1), (a2, r2) = stats(ours), stats(ref)
    spread = scale[1] - scale[0]
    assert abs(a1.mean() - a2.mean()) < 0.03 * spread + 1e-3
    assert abs(a1.std() - a2.std()) < 0.03 * spread + 1e-3
    assert abs(r1.mean() - r2.mean()) < 0.02 and abs(r1.std() - r2.std()) < 0.02
    if scale[1] <= 0.14:  # no attempt is rejected: uniform log aspect ratio on [log 3/4, log 4/3]
        assert abs(float(r1.std()) - 2 * math.log(4 / 3) / math.sqrt(12)) < 0.02


def test_flip_rate_and_patch_offsets():
    mapper = _mapper()
    flips, tops = [], []
    for seed in range(150):
        groups, views, _ = mapper._draw(120, 160, torch.Generator().manual_seed(seed))
        flips += [f for grp in groups for f in grp.flips.tolist()]
        flips += [f for vs in views for v in vs for f in v.flips.tolist()]
        tops += [t % (72 // 3) for v in views[1] for t in v.tops]  # offset inside the cell
    rate = float(np.mean(flips))
    assert abs(rate - 0.5) < 3 * math.sqrt(0.25 / len(flips)) + 0.005
    # RandomCrop(20) in a 24-px cell: offsets uniform on {0..4}.
    counts = np.bincount(tops, minlength=5)
    assert len(counts) == 5 and counts.min() > 0.8 * len(tops) / 5


def test_photometric_rates_ranges_and_sigma():
    n = 20000
    p = P.sample_photometric_params(n, generator=torch.Generator().manual_seed(0))
    tol = lambda q: 4 * math.sqrt(q * (1 - q) / n)  # noqa: E731
    for col, prob in ((P.JITTER_ON, 0.8), (P.GRAY_ON, 0.2), (P.BLUR_ON, 0.5)):
        assert abs(float(p[:, col].mean()) - prob) < tol(prob)
    # The same factor ranges as torchvision's ColorJitter(0.8, 0.8, 0.8, 0.2).
    jitter = T.ColorJitter(0.8, 0.8, 0.8, 0.2)
    torch.manual_seed(0)
    ref = torch.tensor(
        [T.ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation,
                                  jitter.hue)[1:] for _ in range(n)]
    )  # (n, 4): brightness, contrast, saturation, hue
    ours = p[:, [P.BRIGHTNESS, P.CONTRAST, P.SATURATION, P.HUE]]
    for k, (lo, hi) in enumerate([jitter.brightness, jitter.contrast, jitter.saturation,
                                  jitter.hue]):
        assert lo <= float(ours[:, k].min()) and float(ours[:, k].max()) <= hi
        width = hi - lo
        assert abs(float(ours[:, k].mean() - ref[:, k].mean())) < 0.02 * width
        assert abs(float(ours[:, k].std() - ref[:, k].std())) < 0.02 * width
    # Blur sigma ~ U(0.1, 2.0), as the release's PIL blur radius.
    sigma = p[:, P.SIGMA]
    assert 0.1 <= float(sigma.min()) and float(sigma.max()) <= 2.0
    hist = torch.histc(sigma, bins=10, min=0.1, max=2.0)
    assert float(hist.min()) > 0.9 * n / 10 and float(hist.max()) < 1.1 * n / 10


def test_jitter_order_is_a_uniform_permutation_like_torchvision():
    n = 12000
    p = P.sample_photometric_params(n, generator=torch.Generator().manual_seed(1))
    ours = Counter(tuple(row) for row in p[:, P.ORDER].long().tolist())
    torch.manual_seed(1)
    ref = Counter(tuple(torch.randperm(4).tolist()) for _ in range(n))  # ColorJitter's fn_idx
    assert set(ours) == set(ref) == set(permutations(range(4)))

    def chi2(counts):
        e = n / 24
        return sum((counts[k] - e) ** 2 / e for k in permutations(range(4)))

    # 23 degrees of freedom: P(chi2 > 49.7) = 0.001.
    assert chi2(ours) < 49.7 and chi2(ref) < 49.7


# ---------------------------------------------------------------------------- resampling
BOXES = [((10, 20, 400, 300), 96), ((50, 60, 250, 240), 224), ((100, 200, 80, 70), 96),
         ((0, 0, 512, 512), 381)]


def _pil_resized_crop(img: Image.Image, box, size) -> torch.Tensor:
    top, left, h, w = box
    out = img.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.array(out)).permute(2, 0, 1).float()


@pytest.mark.parametrize("box,size", BOXES)
def test_resampling_matches_pil_resize(photo, box, size):
    pil = Image.fromarray(photo)
    image = torch.from_numpy(photo).permute(2, 0, 1)  # HWC memory, as the mapper reads it
    ref = _pil_resized_crop(pil, box, size)
    fast = resized_crop(image, box, size).float()
    assert (fast - ref).abs().mean() < 0.25
    roi = resized_crops_roi_align(image, [box], size)[0].float()
    assert (roi - ref).abs().mean() < 2.5


def test_pyramid_patch_as_sub_box_matches_pil(photo):
    """roi_align cuts a patch as a sub-box of the pyramid crop: compare with PIL's resize of
    the crop followed by the patch crop (the reference recipe)."""
    pil = Image.fromarray(photo)
    image = torch.from_numpy(photo).permute(2, 0, 1)
    (top, left, h, w), size, patch = (30, 40, 420, 400), 381, 96
    resized = _pil_resized_crop(pil, (top, left, h, w), size)
    for t, lf in ((10, 20), (140, 250), (280, 5)):
        ref = resized[:, t : t + patch, lf : lf + patch]
        sy, sx = h / size, w / size
        roi = torch.tensor([[left + lf * sx, top + t * sy, left + (lf + patch) * sx,
                             top + (t + patch) * sy]])
        out = roi_resample(image.float().contiguous(), roi, patch)[0]
        assert (out - ref).abs().mean() < 2.5
        fast = resized_crop(image, (top, left, h, w), size)[:, t : t + patch, lf : lf + patch]
        assert (fast.float() - ref).abs().mean() < 0.25


# ---------------------------------------------------------------------------- photometric ops
@pytest.fixture(scope="module")
def batch(photo) -> torch.Tensor:
    x = torch.from_numpy(photo).permute(2, 0, 1).float().div(255)
    return torch.stack([x[:, :96, :96], x[:, 200:296, 150:246], x[:, 400:496, 300:396]])


def test_colour_ops_match_torchvision(batch):
    f = torch.tensor([0.3, 1.0, 1.7])
    shift = torch.tensor([-0.2, 0.05, 0.2])
    for i in range(3):
        img = batch[i]
        ours = P.adjust_brightness_(batch[i : i + 1].clone(), f[i : i + 1])[0]
        torch.testing.assert_close(ours, TF.adjust_brightness(img, float(f[i])), atol=1e-6,
                                   rtol=0)
        # torchvision's grey level uses 0.2989 for red, ours 0.299 (ITU-R 601, PIL).
        ours = P.adjust_contrast_(batch[i : i + 1].clone(), f[i : i + 1])[0]
        torch.testing.assert_close(ours, TF.adjust_contrast(img, float(f[i])), atol=1e-3,
                                   rtol=0)
        ours = P.adjust_saturation_(batch[i : i + 1].clone(), f[i : i + 1])[0]
        torch.testing.assert_close(ours, TF.adjust_saturation(img, float(f[i])), atol=1e-3,
                                   rtol=0)
        ours = P.adjust_hue(batch[i : i + 1], shift[i : i + 1])[0]
        torch.testing.assert_close(ours, TF.adjust_hue(img, float(shift[i])), atol=1e-5,
                                   rtol=0)
    gray = P._gray(batch).expand(-1, 3, -1, -1)
    torch.testing.assert_close(gray, TF.rgb_to_grayscale(batch, 3), atol=1e-3, rtol=0)


def test_hue_on_ties_and_greys():
    x = torch.rand(4, 3, 16, 16)
    x[:, :, :4] = x[:, :1, :4]  # grey pixels
    x[:, 1, 4:8] = x[:, 0, 4:8]  # r == g
    x[:, 2, 8:12] = x[:, 1, 8:12]  # g == b
    x[:, 2, 12:] = x[:, 0, 12:]  # r == b
    shift = torch.tensor([-0.5, -0.13, 0.2, 0.5])
    ref = torch.stack([TF.adjust_hue(x[i], float(shift[i])) for i in range(4)])
    torch.testing.assert_close(P.adjust_hue(x, shift), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sigma", [0.1, 0.7, 1.3, 2.0])
def test_blur_matches_torchvision_and_pil(batch, sigma):
    k = 2 * math.ceil(3 * sigma) + 1
    ours = P.gaussian_blur(batch, torch.full((3,), sigma))
    ref = TF.gaussian_blur(batch, [k, k], [sigma, sigma])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # PIL's GaussianBlur(radius=sigma) (the release) approximates the same Gaussian with box
    # blurs: compare on uint8 away from the borders.
    img = Image.fromarray((batch[1] * 255).round().byte().permute(1, 2, 0).numpy())
    pil = torch.from_numpy(np.array(img.filter(ImageFilter.GaussianBlur(sigma))))
    pil = pil.permute(2, 0, 1).float()
    mae = (ours[1] * 255 - pil)[:, 8:-8, 8:-8].abs().mean()
    assert mae < 1.5


@pytest.mark.parametrize("size", [4, 40])  # replicate padding (smaller than a kernel), reflect
def test_blur_conv_path_mixed_sigmas(size):
    """The batched convolution path (more than 6 channels; channels-last on the CPU), each image
    with its own sigma, equals torchvision image by image; the result is contiguous."""
    x = torch.rand(5, 3, size, size + 3)
    sigma = torch.tensor([0.1, 0.6, 1.1, 1.7, 2.0])
    ours = P.gaussian_blur(x, sigma)
    assert ours.is_contiguous()
    internal = P._blur_host_sigma(x, sigma.numpy())  # the loader's entry point
    for i, s in enumerate(sigma.tolist()):
        k = 2 * math.ceil(3 * s) + 1
        if size > 6:  # the batch kernel radius: reflect padding
            ref = TF.gaussian_blur(x[i], [k, k], [s, s])
            torch.testing.assert_close(ours[i], ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(internal[i], ours[i], atol=1e-6, rtol=0)


def _reference_apply(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Per image, torchvision's functional ops in the drawn order (float, [0, 1])."""
    out = []
    for img, p in zip(x, params):
        if p[P.JITTER_ON] > 0.5:
            for op in p[P.ORDER].long().tolist():
                if op == 0:
                    img = TF.adjust_brightness(img, float(p[P.BRIGHTNESS]))
                elif op == 1:
                    img = TF.adjust_contrast(img, float(p[P.CONTRAST]))
                elif op == 2:
                    img = TF.adjust_saturation(img, float(p[P.SATURATION]))
                else:
                    img = TF.adjust_hue(img, float(p[P.HUE]))
        if p[P.GRAY_ON] > 0.5:
            img = TF.rgb_to_grayscale(img, 3)
        if p[P.BLUR_ON] > 0.5:
            s = float(p[P.SIGMA])
            k = 2 * math.ceil(3 * s) + 1
            img = TF.gaussian_blur(img[None], [k, k], [s, s])[0]
        out.append(img)
    return torch.stack(out)


def test_apply_photometric_matches_per_image_torchvision(photo):
    g = torch.Generator().manual_seed(5)
    image = torch.from_numpy(photo).permute(2, 0, 1).float().div(255)
    tops = torch.randint(0, 512 - 48, (24, 2), generator=g)
    x = torch.stack([image[:, t : t + 48, lf : lf + 48] for t, lf in tops.tolist()])
    params = P.sample_photometric_params(24, generator=g)
    x0 = x.clone()
    ours = P.apply_photometric(x, params)
    assert torch.equal(x, x0)  # not in place by default
    ref = _reference_apply(x, params)
    assert (ours - ref).abs().max() < 5e-3 and (ours - ref).abs().mean() < 2e-4
    # uint8 in, uint8 out: the same up to rounding.
    u8 = (x * 255).round().byte()
    out8 = P.apply_photometric(u8, params)
    ref8 = (P.apply_photometric(u8.float() / 255, params) * 255).round()
    assert out8.dtype == torch.uint8 and (out8.float() - ref8).abs().max() <= 1


@pytest.mark.parametrize("kernel", ["numba", "torch"])
@pytest.mark.parametrize("resample", ["interpolate", "roi_align"])
def test_loader_and_model_paths_agree(photo, resample, kernel):
    image = torch.from_numpy(photo).permute(2, 0, 1)
    loader = _mapper(photometric_on="loader", resample=resample, loader_kernel=kernel)
    model = _mapper(photometric_on="model", resample=resample)
    for seed in range(3):
        a = loader.map_image(image, torch.Generator().manual_seed(seed))
        b = model.map_image(image, torch.Generator().manual_seed(seed))
        units_a = list(a["crops"]) + [v for p in a["patches"] for v in p.flatten(0, 1)]
        units_b = list(b["crops"]) + [v for p in b["patches"] for v in p.flatten(0, 1)]
        for i, (ua, ub) in enumerate(zip(units_a, units_b)):
            # What the model does on the device.
            y = P.apply_photometric(ub[None].float() / 255, b["photometric"][i : i + 1])
            y = (y[0] * 255).round()
            diff = (ua.float() - y).abs()
            assert diff.max() <= 1, (seed, i)
            assert (diff > 0).float().mean() < 0.01


@pytest.mark.parametrize("as_uint8", [True, False])
def test_chunked_apply_matches_one_batch(photo, monkeypatch, as_uint8):
    """CPU chunks (each written into the output buffer in input order) give the result of one
    batch; grey images are blurred as one channel, as the three equal channels would be."""
    g = torch.Generator().manual_seed(11)
    image = torch.from_numpy(photo).permute(2, 0, 1)
    tops = torch.randint(0, 512 - 40, (20, 2), generator=g)
    x = torch.stack([image[:, t : t + 40, lf : lf + 40] for t, lf in tops.tolist()])
    x = x if as_uint8 else x.float() / 255
    params = P.sample_photometric_params(20, generator=g)
    params[:3, P.GRAY_ON], params[:3, P.BLUR_ON] = 1.0, 1.0  # some blurred grey images
    whole = P.apply_photometric(x, params)
    monkeypatch.setattr(P, "CPU_CHUNK_ELEMENTS", 3 * 40 * 40 * 6)  # 4 chunks
    chunked = P.apply_photometric(x, params)
    assert chunked.dtype == whole.dtype and not chunked.is_inference()
    assert (chunked.float() - whole.float()).abs().max() <= (1 if as_uint8 else 1e-5)
    ref = _reference_apply(x.float() / 255 if as_uint8 else x, params)
    ref = (ref * 255).round() if as_uint8 else ref
    assert (chunked.float() - ref).abs().max() <= (1 if as_uint8 else 5e-3)


# ---------------------------------------------------------------------------- numba kernel
def _photo_crops(photo, n: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    image = torch.from_numpy(photo).permute(2, 0, 1)
    tops = torch.randint(0, 512 - max(h, w), (n, 2), generator=g)
    return torch.stack([image[:, t : t + h, lf : lf + w] for t, lf in tops.tolist()])


def _only(params: torch.Tensor, op: str) -> torch.Tensor:
    """Rows that run just ``op`` (jitter steps other than ``op`` off or neutral)."""
    p = params.clone()
    p[:, P.GRAY_ON] = float(op == "gray")
    p[:, P.BLUR_ON] = float(op == "blur")
    p[:, P.JITTER_ON] = float(op in ("brightness", "contrast", "saturation", "hue"))
    for name, col in (("brightness", P.BRIGHTNESS), ("contrast", P.CONTRAST),
                      ("saturation", P.SATURATION)):
        if name != op:
            p[:, col] = 1.0
    if op != "hue":
        p[:, P.HUE] = 0.0
    return p


@pytest.mark.parametrize(
    "op", ["brightness", "contrast", "saturation", "hue", "gray", "blur", "all"]
)
def test_numba_kernel_matches_torch_and_torchvision(photo, op):
    """Each op alone and the whole chain, on a non-square crop size: the numba kernel equals
    the torch implementation and torchvision's ops up to uint8 rounding."""
    x = _photo_crops(photo, 24, 40, 56, seed=3)
    params = P.sample_photometric_params(24, generator=torch.Generator().manual_seed(4))
    if op != "all":
        params = _only(params, op)
    ours = PN.apply_photometric_numba(x, params)
    assert ours.dtype == torch.uint8 and ours.shape == x.shape
    torch_path = P.apply_photometric(x, params)
    diff = (ours.int() - torch_path.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3, op
    ref = (_reference_apply(x.float() / 255, params) * 255).round()
    diff = (ours.float() - ref).abs()
    # torchvision's grey level weighs red 0.2989 where ours (PIL, ITU-R 601) uses 0.299.
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.02, op
    if op != "all":
        changed = (ours != x).any()
        assert changed, f"{op} changed nothing"


def test_numba_hue_on_ties_and_greys():
    """Grey pixels and ties between the largest channels resolve as torchvision's (red, then
    green, then blue)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=g)
    x[:, :, :4] = x[:, :1, :4]  # grey pixels
    x[:, 1, 4:8] = x[:, 0, 4:8]  # r == g
    x[:, 2, 8:12] = x[:, 1, 8:12]  # g == b
    x[:, 2, 12:] = x[:, 0, 12:]  # r == b
    params = _only(P.sample_photometric_params(4, generator=g), "hue")
    params[:, P.HUE] = torch.tensor([-0.5, -0.13, 0.2, 0.5])
    ours = PN.apply_photometric_numba(x, params).float()
    ref = torch.stack([TF.adjust_hue(x[i].float() / 255, float(params[i, P.HUE]))
                       for i in range(4)])
    assert (ours - (ref * 255).round()).abs().max() <= 1
    assert torch.equal(ours[:, :, :4], x[:, :, :4].float())  # greys unchanged


def test_numba_kernel_in_place_small_images_and_wide_sigma(photo):
    """``out=x`` gives the out-of-place result; images no larger than the kernel radius use
    replicate padding like the torch implementation; sigmas beyond the default range work."""
    x = _photo_crops(photo, 6, 5, 7, seed=8)
    params = P.sample_photometric_params(
        6, generator=torch.Generator().manual_seed(9), blur_prob=1.0, blur_sigma=(2.0, 4.0)
    )
    expected = PN.apply_photometric_numba(x, params)
    torch_path = P.apply_photometric(x, params)
    assert (expected.int() - torch_path.int()).abs().max() <= 1
    y = x.clone()
    assert PN.apply_photometric_numba(y, params, out=y) is y
    assert torch.equal(y, expected)
    big = _photo_crops(photo, 3, 64, 64, seed=2)
    wide = P.sample_photometric_params(
        3, generator=torch.Generator().manual_seed(1), blur_prob=1.0, blur_sigma=(3.0, 5.0)
    )
    diff = (PN.apply_photometric_numba(big, wide).int() - P.apply_photometric(big, wide).int())
    assert diff.abs().max() <= 1


def test_numba_kernel_bad_input_and_missing_numba(monkeypatch):
    params = P.sample_photometric_params(2)
    with pytest.raises(ValueError, match="uint8"):
        PN.apply_photometric_numba(torch.zeros(2, 3, 8, 8), params)
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="out must be a contiguous uint8"):
        PN.apply_photometric_numba(x, params, out=x.transpose(2, 3))
    with pytest.raises(ValueError, match="LOADER_KERNEL"):
        _mapper(photometric_on="loader", loader_kernel="cuda")
    monkeypatch.setattr(PN, "NUMBA_AVAILABLE", False)
    with pytest.raises(RuntimeError, match="pip install numba.*LOADER_KERNEL torch"):
        _mapper(photometric_on="loader")
    _mapper(photometric_on="loader", loader_kernel="torch")  # the fallback needs no numba
    _mapper(photometric_on="model")  # neither does the device path


def test_truncate_to_uint8_matches_direct_conversion():
    x = torch.cat([torch.rand(10000) * 256, torch.arange(0, 256, 0.25)]).clamp_(0, 255.999)
    assert torch.equal(P.truncate_to_uint8(x), x.to(torch.uint8))
