"""`mbdl doctor`'s platform section (`mbdl_app/doctor.py`): Jetson/JetPack from the L4T release file,
the NVIDIA driver and CUDA runtime, TensorRT, ONNX Runtime's GPU providers, torch, and each thing
missing with its one-line fix."""

from mbdl_app.doctor import JETSON_INDEX, collect, jetson, missing, platform_report, render

# the first line of /etc/nv_tegra_release on a JetPack 6.2 Orin (the L4T release file's format)
ORIN_JP62 = ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
             "DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\n")
XAVIER_JP51 = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Aug 1\n"


def test_this_machine_is_not_a_jetson_and_says_so_with_what_it_lacks():
    p = platform_report()
    assert p["jetson"] == {"jetson": False, "l4t": None, "jetpack": None, "board": None,
                           "error": "not a Jetson (no /etc/nv_tegra_release)"}
    assert "CPUExecutionProvider" in p["ort_providers"]
    lacks = missing(p)
    if p["cuda"]["driver"] is None:  # no GPU here: one line says the CPU engines run, and why no GPU ones
        assert any("NVIDIA GPU" in m["what"] and "CPU engines" in m["fix"] for m in lacks)
    for m in lacks:
        assert m["what"] and m["fix"] and "\n" not in m["fix"]


def test_l4t_release_file_gives_the_jetpack_version(tmp_path):
    f = tmp_path / "nv_tegra_release"
    f.write_text(ORIN_JP62)
    assert jetson(f) == {"jetson": True, "l4t": "36.4.3", "jetpack": "6.2", "board": "generic", "error": None}
    f.write_text(XAVIER_JP51)
    assert jetson(f)["jetpack"] == "5.1.2"
    f.write_text("garbage\n")
    j = jetson(f)
    assert j["jetson"] and j["l4t"] is None and "unrecognized" in j["error"]


def test_a_jetson_without_the_gpu_builds_gets_the_jetson_index_fixes(tmp_path):
    f = tmp_path / "nv_tegra_release"
    f.write_text(ORIN_JP62)
    p = platform_report(f)  # this machine's libraries, seen as if on a Jetson: CPU ORT, no TensorRT
    p["cuda"]["runtime"] = None
    fixes = {m["what"].split(" (")[0]: m["fix"] for m in missing(p)}
    assert "an NVIDIA GPU" not in fixes
    assert fixes["the CUDA runtime"] == "sudo apt install nvidia-jetpack"
    if "CUDAExecutionProvider" not in p["ort_providers"]:
        assert JETSON_INDEX in fixes["ONNX Runtime's CUDA provider"]
        assert JETSON_INDEX == "https://pypi.jetson-ai-lab.io/jp6/cu126"
    if p["tensorrt_python"] is None:
        assert "python3-libnvinfer" in fixes["TensorRT"]
    f.write_text(XAVIER_JP51)
    assert any(m["what"].startswith("JetPack 6") for m in missing(platform_report(f)))


def test_doctor_text_has_the_platform_lines_and_each_fix():
    report = collect(probe_qt=False)  # the Qt probe has its own test (test_engines_bench_and_doctor.py)
    text = render(report)
    for field in ("jetson        not a Jetson", "nvidia driver", "cuda          runtime", "tensorrt lib",
                  "ort gpu", "missing"):
        assert field in text, (field, text)
    for m in report["missing"]:
        assert f"  - {m['what']}" in text and f"fix: {m['fix']}" in text
