"""The app layer: the ``steerlens`` command line (``steerlens.app.cli``) and the tour
(``steerlens.app.tour``). It sits above all four packages and imports them lazily, so
``steerlens --help`` stays instant; nothing below it imports it."""
