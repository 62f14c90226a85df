"""Evaluation metrics: reconstruction fidelity now; sample quality (FID, KID, prompt adherence) later."""
