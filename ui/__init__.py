"""The desktop GUI (PySide6 + pyqtgraph): the only package that imports Qt."""
