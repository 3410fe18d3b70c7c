"""`retrain run`'s Beam flags (pipeline/beam_flags.py): what reaches Beam, and bad
combinations refused with exit 2 and one line before anything runs."""

import pytest

from conftest import png_bytes
from pipeline import beam_flags, cli
from pipeline.config import DIRECT_RUNNER_NO_STAGING


def _images(root):
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(10):
            (root / label / f"{i}.png").write_bytes(png_bytes(hash((label, i)) % 10_000))
    return root


def _config_beam_args(*flags):
    """The beam_args `retrain run`'s flags give its PipelineConfig."""
    from pipeline import config_flags
    parser = cli._parser()
    cli._register_extensions(parser)
    args = parser.parse_args(["run", "--images", "i", "--workdir", "w", *flags])
    return beam_flags.from_run_flags(args, config_flags.default(config_flags.BEAM_WORKERS))


def test_portable_shorthand_and_passthrough_reach_the_pipeline():
    args = _config_beam_args(
        "--beam-runner", "portable", "--job-endpoint", "localhost:8099",
        "--environment-type", "EXTERNAL", "--environment-config", "127.0.0.1:50000",
        "--beam-arg=--max_bundle_size=8")
    assert args == ["--runner=PortableRunner", "--job_endpoint=localhost:8099",
                    "--environment_type=EXTERNAL", "--environment_config=127.0.0.1:50000",
                    beam_flags.PREPARED_WORKERS_NO_STAGING, beam_flags.JOB_SERVER_TIMEOUT,
                    "--max_bundle_size=8"]
    assert not beam_flags.workers_are_local(args)


def test_default_is_the_direct_runner_and_a_passthrough_runner_owns_the_options():
    assert _config_beam_args() == \
        ["--direct_num_workers=1", DIRECT_RUNNER_NO_STAGING]
    flink = _config_beam_args("--beam-arg=--runner=FlinkRunner",
                              "--beam-arg=--flink_master=flink:8081")
    # No DirectRunner option; a day for the job's state stream, unless given.
    assert flink == [beam_flags.JOB_SERVER_TIMEOUT, "--runner=FlinkRunner", "--flink_master=flink:8081"]
    assert _config_beam_args("--beam-arg=--runner=FlinkRunner", "--beam-arg=--job_server_timeout=5") \
        == ["--runner=FlinkRunner", "--job_server_timeout=5"]
    assert beam_flags.workers_are_local(["--direct_num_workers=1"])
    assert beam_flags.workers_are_local(["--runner", "PortableRunner", "--environment_type=LOOPBACK"])
    assert not beam_flags.workers_are_local(flink)


def test_docker_image_stops_tfx_staging():
    assert beam_flags.portable_beam_args("flink-jobserver:8099", None, "registry/retrain:1") == [
        "--runner=PortableRunner", "--job_endpoint=flink-jobserver:8099",
        "--environment_type=DOCKER", "--sdk_container_image=registry/retrain:1"]


@pytest.mark.parametrize("flags,expected", [
    (["--job-endpoint", "localhost:8099"], "--job-endpoint: only with --beam-runner portable"),
    (["--environment-type", "EXTERNAL"], "--environment-type: only with --beam-runner portable"),
    (["--beam-runner", "portable"], "needs --job-endpoint HOST:PORT"),
    (["--beam-runner", "portable", "--job-endpoint", "localhost"], "must be HOST:PORT"),
    (["--beam-runner", "portable", "--job-endpoint", "localhost:70000"], "port 1-65535"),
    (["--beam-runner", "portable", "--job-endpoint", "h:1"], "DOCKER needs --environment-config"),
    (["--beam-runner", "portable", "--job-endpoint", "h:1", "--environment-type", "EXTERNAL"],
     "EXTERNAL needs --environment-config: the worker pool's HOST:PORT"),
    (["--beam-runner", "portable", "--job-endpoint", "h:1", "--environment-type", "EXTERNAL",
      "--environment-config", "not an endpoint"], "--environment-config (EXTERNAL) must be HOST:PORT"),
    (["--beam-runner", "portable", "--job-endpoint", "h:1", "--environment-type", "LOOPBACK",
      "--environment-config", "x"], "LOOPBACK takes no --environment-config"),
    (["--beam-runner", "portable", "--job-endpoint", "h:1", "--environment-type", "LOOPBACK",
      "--beam-workers", "2"], "--beam-workers is for the DirectRunner"),
    (["--beam-arg=--runner=SparkRunner", "--beam-workers", "2"], "--beam-workers is for the DirectRunner"),
    (["--beam-runner", "direct", "--beam-arg=--runner=FlinkRunner"], "give one"),
    (["--beam-arg=runner=FlinkRunner"], "--beam-arg must look like --name=value"),
    (["--beam-arg=--a=b\n--c"], "--beam-arg must look like --name=value"),
    (["--beam-arg=--direct_num_workers=3"], "sets --direct_num_workers, which another flag"),
    (["--beam-runner", "portable", "--job-endpoint", "h:1", "--environment-type", "LOOPBACK",
      "--beam-arg=--job_endpoint=h:2"], "sets --job_endpoint"),
])
def test_bad_combinations_exit_2_with_one_line(tmp_path, capsys, flags, expected):
    images = _images(tmp_path / "img")
    code = cli.main(["run", "--images", str(images), "--workdir", str(tmp_path / "w"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("retrain: error: "), err
    assert expected in err[0]
    assert not (tmp_path / "w").exists()


def test_compile_shares_the_passthrough_check(tmp_path, capsys):
    code = cli.main(["compile", "--output", str(tmp_path / "p.yaml"), "--image", "img:1",
                     "--pipeline-root", "gs://b/root", "--labels", "a,b",
                     "--beam-arg=--direct_num_workers=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "sets --direct_num_workers" in err[0]


def test_local_paths_with_remote_workers_are_named():
    remote = beam_flags.portable_beam_args("h:8099", "EXTERNAL", "h:50000")
    note = beam_flags.unshared_paths_note(
        remote, [("--images", "/data/photos"), ("--pipeline-root", "gs://b/root"), ("--weights", None)])
    assert note.startswith("Beam workers elsewhere use --images /data/photos: each worker must see it")
    assert "gs://b/root" not in note
    assert beam_flags.unshared_paths_note(remote, [("--images", "s3://b/photos")]) is None
    assert beam_flags.unshared_paths_note(["--direct_num_workers=1"], [("--images", "/data")]) is None
