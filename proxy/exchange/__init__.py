"""One call to the provider, primary or shadow: the client that makes it (``upstream``), how
its answer is read (``answer``), its outcome (``outcome``), and what sees it finish
(``observers``, ``recorders``). Below ``shadow`` and ``pipeline``, which both use all of it."""
