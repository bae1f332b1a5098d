"""camcore: models, CAM methods, targets, the compute engine and the FiftyOne store of CAM Explorer.

Never imports streamlit: the app, the CLI and the tests all call the same functions.
"""
__version__ = "0.1.0"
