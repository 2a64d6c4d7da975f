"""Execution settings: threads, allocator, channels-last, torch.compile, batch sizing — and that none of
them changes results beyond the stated tolerances (docs/performance.md)."""

import json

import pytest
import torch

from progaug.generator import GenerationConfig, generate_progressive
from progaug.hub import load_pair
from progaug.precomputation import PrecomputeConfig, precompute
from progaug.runtime import (
    CPU_MAX_BATCH,
    RuntimeConfig,
    apply_runtime,
    auto_max_batch,
    autocast,
    autocast_dtype,
    cpu_model,
    default_device,
    default_threads,
    machine_description,
    native_bf16,
    prepare_model,
    resolve_bf16,
    rows_that_fit,
    tune_malloc,
)

from conftest import random_tiles, tiny_unet

LEVELS = [0.25, 0.5, 1.0]
HALF_GREY_LEVEL = 1 / 255  # images live in [-1, 1]: one 8-bit level is 2/255


def assert_same_result(fast, reference):
    """The stated tolerance of docs/performance.md: same depths, labels to 1e-4, every pixel within half
    an 8-bit grey level (so the PNGs differ by at most one level), mean pixel difference below 1e-4."""
    assert torch.equal(fast.depths, reference.depths)
    torch.testing.assert_close(fast.soft_labels, reference.soft_labels, atol=1e-4, rtol=0)
    diff = (fast.images - reference.images).abs()
    assert float(diff.max()) < HALF_GREY_LEVEL and float(diff.mean()) < 1e-4, (float(diff.max()), float(diff.mean()))


@pytest.fixture(scope="module")
def pair():
    return tiny_unet("global", seed=0), tiny_unet("local", seed=1)


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(7)) * 2 - 1


@pytest.fixture(scope="module")
def reference(pair, images):
    return generate_progressive(*pair, images, LEVELS, GenerationConfig(steps=8, bf16=False))


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class TestThreads:
    def test_divided_among_local_torchrun_processes(self, monkeypatch):
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        assert default_threads() == 16
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
        assert default_threads() == 4
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
        assert default_threads() == 1

    def test_apply_sets_torch_threads(self, restore_threads):
        info = apply_runtime(RuntimeConfig(threads=1, malloc_tuning=False), "cpu")
        assert torch.get_num_threads() == 1 and info == {"threads": 1, "malloc_tuning": False}

    def test_malloc_tuning_on_linux_cpu_only(self, restore_threads):
        import sys

        assert apply_runtime(RuntimeConfig(threads=1), "cpu")["malloc_tuning"] is sys.platform.startswith("linux")
        assert apply_runtime(RuntimeConfig(threads=1), "meta")["malloc_tuning"] is False
        assert tune_malloc() is sys.platform.startswith("linux")

    @pytest.mark.parametrize("bad,exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)])
    def test_bad_threads_named(self, bad, exc):
        with pytest.raises(exc, match="`threads`"):
            RuntimeConfig(threads=bad)

    def test_json_round_trip(self):
        cfg = RuntimeConfig(threads=3, channels_last=True, compile=True, malloc_tuning=False)
        assert RuntimeConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


class TestDefaults:
    def test_device(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert default_device() == "cpu"
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert default_device() == "cuda"

    def test_channels_last_by_default(self):
        assert RuntimeConfig().channels_last and not RuntimeConfig(channels_last=False).channels_last

    def test_autocast_dtype_of_the_bf16_flag(self):
        assert autocast_dtype(True) is torch.bfloat16 and autocast_dtype(False) is None
        with autocast("cpu", autocast_dtype(True)):
            assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
        with autocast("cpu", autocast_dtype(False)):
            assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


class TestBatchSizing:
    def test_rows_that_fit(self):
        mib = 2**20
        # 0.7 * 1000 MiB - 100 MiB fixed = 600 MiB at 10 MiB a row -> 60 rows -> 56 (multiple of 8)
        assert rows_that_fit(1000 * mib, 100 * mib, 10 * mib) == 56
        assert rows_that_fit(1000 * mib, 100 * mib, 10 * mib, fraction=0.9) == 80
        assert rows_that_fit(100 * mib, 100 * mib, 10 * mib) == 1  # nothing fits: still one row
        assert rows_that_fit(1000 * mib, 0, 1, cap=256) == 256
        assert rows_that_fit(1000 * mib, 650 * mib, 10 * mib) == 5  # below 8: not rounded

    def test_cpu_default(self, pair):
        assert auto_max_batch(pair[0], 32, "cpu") == CPU_MAX_BATCH

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_cuda_probe_fits(self, pair):
        model = tiny_unet("global").cuda()
        rows = auto_max_batch(model, 32, "cuda")
        assert 8 <= rows <= 1024
        model(torch.zeros(rows, 3, 32, 32, device="cuda"), torch.zeros(rows, dtype=torch.long, device="cuda"))


class TestSameResults:
    """Each setting against float32, channels-first, eager, all rows in one call."""

    def test_channels_last(self, pair, images, reference):
        fast = generate_progressive(*(prepare_model(m, RuntimeConfig(channels_last=True)) for m in pair), images, LEVELS, GenerationConfig(steps=8, bf16=False))
        assert_same_result(fast, reference)

    def test_channels_last_keeps_model_config(self, pair):
        model = prepare_model(pair[0], RuntimeConfig(channels_last=True))
        assert model.config == pair[0].config
        convs = [p for p in model.parameters() if p.ndim == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)

    def test_compile(self, pair, images, reference):
        cfg = RuntimeConfig(compile=True, channels_last=True)
        models = [prepare_model(m, cfg, compile_backend="aot_eager") for m in pair]
        assert models[0].config == pair[0].config
        fast = generate_progressive(*models, images, LEVELS, GenerationConfig(steps=8, max_batch=4, bf16=False), fixed_batch=True)
        assert_same_result(fast, reference)

    def test_max_batch(self, pair, images, reference):
        fast = generate_progressive(*pair, images, LEVELS, GenerationConfig(steps=8, max_batch=3, bf16=False))
        assert_same_result(fast, reference)


class TestPrecomputeBatches:
    def test_automatic_batches_recorded_and_kept_on_resume(self, pair_dir, tmp_path):
        pair = load_pair(pair_dir)
        cfg = PrecomputeConfig(n=6, num_levels=3, steps=6)
        out = precompute(pair, random_tiles(2), ["a", "b"], tmp_path / "c", cfg, progress=False)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["execution"]["max_batch"] == CPU_MAX_BATCH == manifest["execution"]["batch_size"]
        assert manifest["settings"]["config"]["max_batch"] == CPU_MAX_BATCH
        assert "batch_size" not in manifest["settings"]["config"]
        # another batch size on resume is fine (results do not depend on it) ...
        precompute(pair, random_tiles(2), ["a", "b"], out, PrecomputeConfig(n=6, num_levels=3, steps=6, batch_size=1), resume=True, progress=False)
        # ... another max_batch is not
        with pytest.raises(ValueError, match="other settings"):
            precompute(pair, random_tiles(2), ["a", "b"], out, PrecomputeConfig(n=6, num_levels=3, steps=6, max_batch=4), resume=True,
                       progress=False)


class TestBf16Default:
    """bf16 autocast by default where the device computes it natively (issue: a faster main job)."""

    def test_resolution(self):
        assert resolve_bf16(None, "cpu") is native_bf16("cpu")
        assert resolve_bf16(True, "cpu") is True and resolve_bf16(False, "cpu") is False
        assert native_bf16("meta") is False
        with pytest.raises(TypeError, match="`bf16` must be True, False or None \\(automatic\\), got str 'yes'"):
            resolve_bf16("yes", "cpu")
        with pytest.raises(TypeError, match="`bf16` must be True, False or None"):
            PrecomputeConfig(bf16=1)

    def test_precompute_records_what_it_used_and_resumes_with_it(self, pair_dir, tmp_path, monkeypatch):
        import progaug.runtime

        pair = load_pair(pair_dir)
        monkeypatch.setattr(progaug.runtime, "native_bf16", lambda device: True)
        out = precompute(pair, random_tiles(2), ["a", "b"], tmp_path / "c", PrecomputeConfig(n=6, num_levels=3, steps=6), progress=False)
        assert json.loads((out / "run.json").read_text())["config"]["bf16"] is True
        monkeypatch.setattr(progaug.runtime, "native_bf16", lambda device: False)
        # a resume on a machine without native bf16 keeps the stored choice (same results) ...
        precompute(pair, random_tiles(2), ["a", "b"], out, PrecomputeConfig(n=6, num_levels=3, steps=6), resume=True, progress=False)
        # ... and an explicit other choice is refused as another setting
        with pytest.raises(ValueError, match="other settings"):
            precompute(pair, random_tiles(2), ["a", "b"], out, PrecomputeConfig(n=6, num_levels=3, steps=6, bf16=False), resume=True,
                       progress=False)


def test_bf16_moves_no_depth_or_label_and_keeps_images_above_40_db_on_the_demo_pair():
    """docs/performance.md: bf16 autocast reaches the decodes only, so depths and soft labels are those of
    float32 and the demo pair's images stay at >= 40 dB PSNR of float32 (4 held-out stroma tiles, S = 20,
    the default measure, where bf16 is native; benchmarks/precision.py measures more)."""
    from progaug.data.splits import load_splits
    from progaug.data.tiles import to_model_range
    from progaug.metrics import psnr

    demo = load_pair("hgsc-demo")
    # where the CPU has no native bf16 (AVX2) autocast emulates it, about 8 min at the full size, and bf16 is
    # never the default there: one tile, two levels, S = 6
    count, steps, levels = (4, 20, [0.25, 0.5, 0.75, 1.0]) if native_bf16("cpu") else (1, 6, [0.5, 1.0])
    tiles = load_splits("hgsc", demo.image_size)["test"].of_class(demo.classes[0]).images[:count]
    x = to_model_range(tiles)
    fp32 = GenerationConfig(steps=steps, bf16=False)
    ref = generate_progressive(demo.source, demo.target, x, levels, fp32, diffusion=demo.diffusion)
    low = generate_progressive(demo.source, demo.target, x, levels, GenerationConfig(steps=steps, bf16=True), diffusion=demo.diffusion)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's own autocast does not reach the labels either
        outer = generate_progressive(demo.source, demo.target, x, levels, fp32, diffusion=demo.diffusion)
    for other in (low, outer):
        assert torch.equal(other.depths, ref.depths) and torch.equal(other.soft_labels, ref.soft_labels)
    assert float(psnr(low.images.flatten(0, 1), ref.images.flatten(0, 1)).min()) >= 40.0
    assert not torch.equal(low.images, ref.images)  # the decodes did run in bf16


def test_fused_attention_kernel_keeps_the_math_kernels_results_on_the_demo_pair():
    """docs/performance.md: the attention blocks give PyTorch's fused kernel contiguous q, k, v; the result is the
    unfused math kernel's within the tolerance of the settings that change only how the U-Nets run (4 held-out
    stroma tiles, S = 20, the default measure, float32)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from progaug.data.splits import load_splits
    from progaug.data.tiles import to_model_range

    demo = load_pair("hgsc-demo")
    x = to_model_range(load_splits("hgsc", demo.image_size)["test"].of_class(demo.classes[0]).images[:4])
    config, levels = GenerationConfig(steps=20, bf16=False), [0.25, 0.5, 0.75, 1.0]
    fused = generate_progressive(demo.source, demo.target, x, levels, config, diffusion=demo.diffusion)
    with sdpa_kernel(SDPBackend.MATH):
        math = generate_progressive(demo.source, demo.target, x, levels, config, diffusion=demo.diffusion)
    assert_same_result(fused, math)
    assert not torch.equal(fused.images, math.images)  # two kernels did run


class TestMachineDescription:
    """Timed results name the machine: the same command ran 2-3x apart on two 2-core CPUs."""

    def test_cpu_model_is_read_from_cpuinfo(self, tmp_path):
        info = tmp_path / "cpuinfo"
        info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU @ 2.0GHz\nflags\t: fpu\n")
        assert cpu_model(info) == "Test CPU @ 2.0GHz"

    def test_cpu_model_falls_back_without_cpuinfo(self, tmp_path):
        empty = tmp_path / "empty"
        empty.write_text("processor\t: 0\n")
        assert cpu_model(tmp_path / "missing") == cpu_model(empty) != ""

    def test_description_names_cpu_threads_and_bf16(self, tmp_path, monkeypatch):
        import progaug.runtime

        info = tmp_path / "cpuinfo"
        info.write_text("model name\t: Test CPU\n")
        monkeypatch.setattr(progaug.runtime, "native_bf16", lambda device: True)
        text = machine_description("cpu", cpuinfo=info)
        assert "Test CPU" in text and "native bf16" in text and torch.backends.cpu.get_cpu_capability() in text
        monkeypatch.setattr(progaug.runtime, "native_bf16", lambda device: False)
        assert "native bf16" not in machine_description("cpu", cpuinfo=info)
