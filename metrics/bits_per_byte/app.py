import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load("bits_per_byte.py")
launch_gradio_widget(module)
