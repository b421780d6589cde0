"""nbval settings for the course notebooks: stderr (library warnings, progress bars) and rich HTML reprs are
not compared; text outputs and every assertion are."""


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("text/html", "application/javascript", "stderr")
