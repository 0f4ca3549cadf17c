"""The paper's interpretability (`tinystories analyze`): attention-head statistics and MLP-neuron roles."""
