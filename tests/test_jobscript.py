import re
import subprocess
import sys
from pathlib import Path

from sheepdog.caller import jobscript
from sheepdog.wire.settings import WorkerSettings

from .support.fresh_interpreter import call_in_fresh_interpreter

GOLDEN = Path(__file__).parent / "support" / "golden" / "jobscript.txt"

SETTINGS = WorkerSettings(
    request_id=7,
    urls=("https://laptop.example:5000", "https://head.example:41234"),
    certificate="-----BEGIN CERTIFICATE-----\n(pinned)\n-----END CERTIFICATE-----\n",
    key_file="/home/user/.sheepdog/sheepdog_7_0123456789abcdef.key",
    chunksize=1,
    task_variable="SGE_TASK_ID",
    python=(3, 11),
    retry_seconds=600.0,
)


def render():
    return jobscript.render(
        "/usr/bin/python3", ["#$ -S /usr/bin/python3", "#$ -t 1-3", "#$ -l lr=0"], SETTINGS
    )


def test_rendered_job_file_matches_the_golden_file():
    """The file's shape is pinned; the embedded sources are checked separately.

    Regenerate after an intended change with ``python -m tests.support.regenerate_golden``.
    """
    from .support.regenerate_golden import golden_text

    assert golden_text() == GOLDEN.read_text()


def test_job_file_holds_no_credential():
    """Schedulers show job files to every user: the key stays in its private file."""
    text = render()
    assert "key_file" in text and "'key': None" in text and "secret" not in text.lower()


def test_job_file_embeds_the_worker_serialisation_and_cloudpickle_code():
    import cloudpickle

    sources = jobscript.embedded_sources()
    modules = {f"sheepdog.{path.parent.name}.{path.stem}".replace(".__init__", "")
               for folder in ("wire", "worker")
               for path in (Path(jobscript.__file__).parent.parent / folder).glob("*.py")}
    assert set(sources) == {"cloudpickle", "cloudpickle.cloudpickle", "sheepdog"} | modules
    assert "sheepdog.worker.loop" in modules and "sheepdog.wire.settings" in modules
    assert sources["cloudpickle.cloudpickle"][1] == Path(cloudpickle.cloudpickle.__file__).read_text()
    text = render()
    for _is_package, source in sources.values():
        assert repr(source) in text


def test_job_file_is_valid_python_and_starts_with_directives():
    text = render()
    compile(text, "job.py", "exec")
    lines = text.splitlines()
    assert lines[0] == "#!/usr/bin/python3"
    assert lines[1:4] == ["#$ -S /usr/bin/python3", "#$ -t 1-3", "#$ -l lr=0"]


def test_job_file_runs_in_a_bare_interpreter_without_sheepdog(tmp_path):
    """With -I -S neither sheepdog nor cloudpickle is on the path; the file still
    loads its embedded code."""
    path = tmp_path / "job.py"
    path.write_text(render().replace('if __name__ == "__main__":', "if False:"))
    probe = (
        "import importlib.util, runpy\n"
        "assert not importlib.util.find_spec('sheepdog') and not importlib.util.find_spec('cloudpickle')\n"
        "print(sorted(runpy.run_path(%r)['SETTINGS']))\n"
    ) % str(path)
    output = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, check=True,
        cwd=tmp_path,
    ).stdout
    assert re.search(r"'request_id'", output)


def test_embedded_code_runs_what_the_caller_serialised(tmp_path):
    shipped = lambda x: f"{x} from {__name__}"  # noqa: E731 - a lambda is the point
    assert call_in_fresh_interpreter(tmp_path, shipped, ("ran",)) == "ran from tests.test_jobscript"


def _import_the_worker_loop(path: Path, after_loading: str = "") -> str:
    """Run the job file ``path`` in a bare interpreter up to its start, run ``after_loading``,
    import the worker's loop from the file, and print which modules came compiled."""
    text = path.read_text().replace('if __name__ == "__main__":', "if False:")
    path.write_text(text)
    probe = (
        "import runpy, sys\n"
        f"runpy.run_path({str(path)!r})\n"
        f"{after_loading}\n"
        "import sheepdog.worker.loop\n"
        "finder = next(f for f in sys.meta_path if type(f).__name__ == '_Embedded')\n"
        "print(sorted(finder.compiled))\n"
    )
    ran = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True,
                         text=True, check=True, cwd=path.parent)
    return ran.stdout + ran.stderr


def test_a_worker_of_the_callers_python_runs_the_modules_as_the_caller_compiled_them(tmp_path):
    path = tmp_path / "job.py"
    path.write_text(render())
    refuse = "import builtins\ndef refuse(*args, **kwargs): raise AssertionError('compiled')\n" \
             "builtins.compile = refuse"
    output = _import_the_worker_loop(path, after_loading=refuse)
    assert "'sheepdog.worker.loop'" in output and "'cloudpickle.cloudpickle'" in output


def test_a_worker_whose_python_reads_other_bytecode_compiles_the_sources(tmp_path):
    path = tmp_path / "job.py"
    text = render()
    magic = re.search(r"^_MAGIC = (.*)$", text, re.MULTILINE)
    assert magic is not None
    path.write_text(text.replace(magic.group(0), "_MAGIC = b'\\x00\\x00\\r\\n'"))
    assert _import_the_worker_loop(path) == "[]\n"


def test_a_damaged_copy_of_the_compiled_modules_leaves_the_sources_to_compile_and_says_so(
        tmp_path):
    path = tmp_path / "job.py"
    path.write_text(render().replace("_COMPILED = '", "_COMPILED = 'damaged"))
    printed = _import_the_worker_loop(path)
    assert printed.startswith("[]\n") and "sheepdog: compiling the embedded sources" in printed


def test_modules_the_caller_cannot_compile_travel_as_sources_only(tmp_path):
    """Compiling them is a speed-up: under ``-W error``, a SyntaxWarning in a future
    cloudpickle must not fail the submission."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert jobscript.compiled_modules({"odd": (False, "same = 'a' is 'a'\n")}) == ""
    path = tmp_path / "job.py"
    text = render()
    compiled = re.search(r"^_COMPILED = (.*)$", text, re.MULTILINE)
    assert compiled is not None
    path.write_text(text.replace(compiled.group(0), "_COMPILED = ''"))
    assert _import_the_worker_loop(path) == "[]\n"  # and nothing said
