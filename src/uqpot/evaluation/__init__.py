"""A trained model at work: loading any model file, predicting over a data set, and its errors and UQ metrics
(``uqpot evaluate``) with their figures."""
