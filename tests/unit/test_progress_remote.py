"""pipeline.progress with Beam workers elsewhere: a Beam step's counts stay on its
workers, so its line says so instead of showing a bar frozen at zero; counts the
executor keeps (the Trainer's epochs) still show. Also the count line written to a
stderr that is a file, at most every `log_every` seconds."""

import io

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components import progress_counts
from pipeline import mlmd_store
from pipeline.beam_flags import portable_beam_args
from pipeline.config import PipelineConfig
from pipeline.progress import Progress

PIPELINE = "image-retrain"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _store(config):
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = config.metadata_path
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return metadata_store.MetadataStore(cfg)


def _start_run(store, nodes):
    """A run context with one RUNNING execution per node, as LocalDagRunner records them."""
    def ctx_type(name):
        return store.put_context_type(metadata_store_pb2.ContextType(name=name))
    pipeline_type, run_type, node_type = (ctx_type(mlmd_store.PIPELINE_CONTEXT_TYPE),
                                          ctx_type(mlmd_store.RUN_CONTEXT_TYPE), ctx_type("node"))
    ex_type = store.put_execution_type(metadata_store_pb2.ExecutionType(name="step"))
    contexts = store.put_contexts([
        metadata_store_pb2.Context(type_id=pipeline_type, name=PIPELINE),
        metadata_store_pb2.Context(type_id=run_type, name="run-1"),
        *[metadata_store_pb2.Context(type_id=node_type, name=f"{PIPELINE}.{n}") for n in nodes]])
    for node_ctx in contexts[2:]:
        [ex] = store.put_executions([metadata_store_pb2.Execution(
            type_id=ex_type, last_known_state=metadata_store_pb2.Execution.RUNNING)])
        store.put_attributions_and_associations([], [
            metadata_store_pb2.Association(context_id=c, execution_id=ex)
            for c in (contexts[0], contexts[1], node_ctx)])


def _lines(tmp_path, beam_args, stream):
    config = PipelineConfig(images="i", workdir=str(tmp_path), beam_args=beam_args)
    store = _store(config)
    with Progress(config, 14, stream=stream, interval=60, beam_steps=["BottleneckGen"]) as progress:
        _start_run(store, ["Trainer", "BottleneckGen"])
        progress_counts.set_total("BottleneckGen", 30, "images embedded")  # the executor knows it
        progress_counts.set_total("Trainer", 5, "epochs")
        counter = progress_counts.Counter("Trainer", interval=0.0)
        counter.add(2)
        progress._poll()
        return stream.getvalue()


def test_remote_workers_say_their_counts_stay_there(tmp_path):
    out = _lines(tmp_path, portable_beam_args("127.0.0.1:8099", "EXTERNAL", "127.0.0.1:50000"),
                 _Terminal())
    assert "note: the Beam steps run on PortableRunner workers" in out
    assert "counted on the Beam workers" in out
    assert "BottleneckGen running on the Beam workers" in out
    assert "0/30" not in out  # no bar frozen at zero


def test_local_workers_show_the_bar(tmp_path):
    out = _lines(tmp_path, ["--direct_num_workers=1"], _Terminal())
    assert "note:" not in out and "0/30 images embedded, BottleneckGen" in out


def test_executor_counts_still_show_with_remote_workers(tmp_path):
    config = PipelineConfig(images="i", workdir=str(tmp_path),
                            beam_args=["--runner=FlinkRunner", "--flink_master=f:8081"])
    store = _store(config)
    stream = _Terminal()
    with Progress(config, 14, stream=stream, interval=60, beam_steps=["BottleneckGen"]) as progress:
        _start_run(store, ["BottleneckGen", "Trainer"])
        progress_counts.set_total("Trainer", 5, "epochs")
        progress_counts.Counter("Trainer", interval=0.0).add(2)
        progress._poll()
    assert "2/5 epochs, Trainer" in stream.getvalue()


def test_a_file_gets_a_count_line_every_log_every_seconds(tmp_path):
    """README: with stderr a file, start and end lines plus a count line every 10 s.
    The clock is stepped by hand: no sleeping, nothing depends on the machine's load."""
    config = PipelineConfig(images="i", workdir=str(tmp_path), beam_args=["--direct_num_workers=1"])
    store = _store(config)
    now = [1000.0]
    stream = io.StringIO()  # not a terminal: no bar, no carriage returns
    with Progress(config, 14, stream=stream, interval=600, log_every=10.0,
                  clock=lambda: now[0]) as progress:
        _start_run(store, ["Trainer"])
        progress_counts.set_total("Trainer", 60, "epochs")
        counter = progress_counts.Counter("Trainer", interval=0.0)
        for step in (0.0, 9.5, 0.5, 4.0, 5.5, 0.5):  # t = 0, 9.5, 10, 14, 19.5, 20
            now[0] += step
            counter.add()  # one epoch more per poll
            progress._poll()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[ 0/14] Trainer                          running"
    counts = [line.split() for line in lines[1:]]
    assert counts == [["Trainer", "3/60", "epochs"], ["Trainer", "6/60", "epochs"]]  # t=10, t=20
    assert "\r" not in stream.getvalue()
