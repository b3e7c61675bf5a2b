"""The ``ckptfix`` command line: parse options, call the API, print the returned report."""
