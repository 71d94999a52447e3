"""The examples of the configuration and command pages run as written, on the local
backend, in a directory of their own and with a config file of their own."""

from sheepdog.cli import commands as cli
from sheepdog.cli import records

from .support.doc_pages import page, run_page, toml_example
from .support.quickstart import run_doctest


def test_the_configuration_pages_examples_run_with_its_own_config_file(tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHEEPDOG_CONFIG_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    (tmp_path / ".config" / "sheepdog").mkdir(parents=True)
    (tmp_path / ".config" / "sheepdog" / "config.toml").write_text(
        toml_example("configuration.rst"))
    results = run_page("configuration.rst")
    assert results.failed == 0 and results.attempted == 8
    assert (tmp_path / "results.sqlite").exists()  # the [default] table's dbfile


def test_the_resources_pages_previews_are_what_sheepdog_script_prints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHEEPDOG_CONFIG_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))  # no config file
    results = run_page("resources.rst")
    assert results.failed == 0 and results.attempted == 5


def test_the_command_pages_examples_run_against_the_maps_it_shows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The page shows requests made minutes ago; ages have a test of their own.
    monkeypatch.setattr(records, "age", lambda seconds: "3 min ago")
    monkeypatch.setattr(records, "span", lambda seconds: "1 s")
    results = run_page("cli.rst")
    assert results.failed == 0 and results.attempted == 19


def test_a_page_that_says_otherwise_than_the_command_fails(tmp_path, monkeypatch):
    """The runner compares: a page whose promised output is wrong does not pass."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("tests.support.doc_pages.page",
                        lambda _name: "    $ sheepdog list --dbfile nowhere.sqlite\n"
                                      "    ID  CREATED\n")
    assert run_page("cli.rst") == (1, 1)


def test_the_tips_pages_examples_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = run_doctest(page("tips_and_tricks.rst"), {"scheduler": "local"})
    assert results.failed == 0 and results.attempted == 4


def test_the_remembering_pages_examples_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = run_doctest(page("remembering.rst"), {"scheduler": "local", "cache": True})
    assert results.failed == 0 and results.attempted == 13
