"""The paper's width x depth grid (`tinystories sweep`): cells, power-law fits, figures, the results file."""
