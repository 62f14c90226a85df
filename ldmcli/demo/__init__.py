"""`ldm demo`: the whole path from data to a judged text-to-image model, and its report."""
