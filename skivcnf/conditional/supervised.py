"""A classifier on the flow's latent code, trained jointly with the flow on incomplete rows (paper 4.2.1).

The paper trains "a simple classifier consisting of the sequence of a squeezing layer, a
1-dimensional batch-norm layer and a bias-free linear layer" on the latent code of each
completed draw, jointly with the flow and the inference network, on the incomplete data
only. :class:`ClassifierHead` is that head (a squeeze only reorders a flat code, which a
batch-norm and a linear layer do not see, so it is left out), or a small MLP.
:class:`ClassificationTask` turns a batch's :class:`~.bound.BoundTerms` into each row's
cross-entropy, which :func:`~.fitting.fit_inference_network` adds to minus the bound.
"""

from contextlib import contextmanager

import torch
from torch import nn

from .sampling import draw_weights

__all__ = ["ClassificationTask", "ClassifierHead", "draw_class_probabilities"]


class ClassifierHead(nn.Module):
    """Class logits from latent codes: batch-norm, then a bias-free linear layer (the paper's), or an MLP.

    Parameters
    ----------
    features : int
        Width ``d`` of the latent code.
    n_classes : int
    hidden_features : tuple of int, default=()
        Hidden widths of an MLP (ELU) between the batch-norm and the output layer; ``()``
        is the paper's linear head.
    generator : torch.Generator, optional
        Source of the initial weights (the global RNG is not touched).

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import ClassifierHead
    >>> head = ClassifierHead(4, 3, generator=torch.Generator().manual_seed(0))
    >>> head(torch.randn(5, 4, generator=torch.Generator().manual_seed(1))).shape
    torch.Size([5, 3])
    >>> head.net[-1].bias is None  # the paper's head: no bias after the batch-norm
    True
    """

    def __init__(self, features, n_classes, hidden_features=(), generator=None):
        super().__init__()
        dims = [features, *hidden_features]
        layers = [nn.BatchNorm1d(features)]
        for n_in, n_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(n_in, n_out), nn.ELU()]
        layers.append(nn.Linear(dims[-1], n_classes, bias=bool(hidden_features)))
        self.net = nn.Sequential(*layers)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator=None):
        """Initialise the linear layers as ``torch.nn.Linear`` does, from ``generator``."""
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                bound = layer.in_features ** -0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                if layer.bias is not None:
                    layer.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x):
        """Logits ``(batch, n_classes)`` of latent codes ``x : Tensor (batch, d)``."""
        return self.net(x)


HEAD_INPUTS = ("latent", "data")
CLASSIFICATION_LOSSES = ("expected", "predictive")


def _draw_logits(flow, head, completed, head_input="latent"):
    """Logits ``(n_draws, batch, K)`` of completed rows ``(n_draws, batch, d)``: of their latent codes
    ``g(y)`` (``head_input="latent"``), or of the rows themselves (``"data"``)."""
    n_draws, batch, d = completed.shape
    rows = completed.reshape(-1, d)
    return head(flow(rows) if head_input == "latent" else rows).reshape(n_draws, batch, -1)


class ClassificationTask:
    """Each row's cross-entropy under its conditional draws, for joint training with the bound.

    A row's loss is ``sum_k w_k CE(head(g(y_k)), label)`` over its solved draws ``y_k``,
    with ``w_k`` its self-normalised importance weights (detached; uniform where the bound's
    log-weights are gradient surrogates, ``logdet`` other than ``"exact"``): the expected
    cross-entropy under the model's conditional of the row's missing entries, the quantity
    whose importance-weighted average :func:`draw_class_probabilities` predicts from. Its
    gradient reaches the head, the flow (through the latent code and the completion's
    implicit gradients) and the posterior (through the draws).

    Parameters
    ----------
    head : ClassifierHead
    labels : LongTensor (n,)
        Class index of every row of the table being fitted.
    weight : float, default=1.0
        Multiplies the cross-entropy in the joint loss (the paper adds the two).
    weighted : bool, default=True
        Importance-weight the draws (needs exact log-weights); else their plain mean.
    head_input : {"latent", "data"}, default="latent"
        What the head reads: each draw's latent code ``g(y_k)`` (the paper's), or the
        completed row ``y_k`` itself (on the flow's standardised scale).
    alpha : float, default=0.0
        L2 penalty ``alpha / 2 * ||W||^2`` on the head's linear weights (not the biases or the
        batch-norm), spread over the ``n`` rows of ``labels`` (``alpha / (2 n)`` each), so that
        over the table it adds to the summed cross-entropy as ``1 / C`` does in a logistic
        regression (``alpha=1``: scikit-learn's ``LogisticRegression(C=1)``).
    loss : {"expected", "predictive"}, default="expected"
        ``"expected"`` is the weighted mean of the draws' cross-entropies above;
        ``"predictive"`` is ``-log sum_k w_k p(label | y_k)``, the log-loss of the row's
        prediction (the draws' probabilities averaged with their weights, as
        :func:`draw_class_probabilities` does). By Jensen's inequality it is at most the
        expected one: a head may hedge across draws instead of being right on each.
    """

    def __init__(self, head, labels, weight=1.0, weighted=True, head_input="latent", alpha=0.0, loss="expected"):
        if loss not in CLASSIFICATION_LOSSES:
            raise ValueError(f"loss must be one of {CLASSIFICATION_LOSSES}, got {loss!r}.")
        self.loss = loss
        if head_input not in HEAD_INPUTS:
            raise ValueError(f"head_input must be one of {HEAD_INPUTS}, got {head_input!r}.")
        if not alpha >= 0:
            raise ValueError(f"alpha must be a non-negative number, got {alpha!r}.")
        self.head, self.labels, self.weight, self.weighted = head, labels, float(weight), weighted
        self.head_input, self.alpha = head_input, float(alpha)

    def penalty(self):
        """Each row's share of the head's L2 penalty, ``alpha / (2 n) * ||W||^2`` (a 0-d tensor)."""
        weights = [layer.weight for layer in self.head.modules() if isinstance(layer, nn.Linear)]
        return self.alpha / (2 * len(self.labels)) * sum(w.square().sum() for w in weights)

    def parameters(self):
        """The head's parameters, trained with the flow's and the network's."""
        return list(self.head.parameters())

    def row_loss(self, flow, terms, rows):
        """``weight`` times each row's cross-entropy (``loss``) and share of the penalty, ``Tensor (batch,)``.

        ``terms`` are the batch's :class:`~.bound.BoundTerms` (with ``completed``), ``rows``
        the batch's indices into ``labels``.
        """
        logits = _draw_logits(flow, self.head, terms.completed, self.head_input)
        labels = self.labels[rows].expand(logits.shape[0], -1)
        cross_entropy = nn.functional.cross_entropy(logits.permute(1, 2, 0), labels.T, reduction="none").T
        # Detached weights over the solved draws (a row with none: no term, whatever its weights).
        log_weight = torch.where(terms.converged, terms.log_weight.detach(), float("-inf"))
        weights, _ = draw_weights(terms._replace(log_weight=log_weight), weighted=self.weighted)
        if self.loss == "predictive":
            # -log sum_k w_k p(label | y_k): the log-loss of what predict_proba returns. A row with no
            # solved draw keeps finite (unused) terms, so that no NaN reaches the gradient.
            some = terms.converged.any(0)
            log_w = torch.log(weights.to(logits.dtype)).masked_fill(~terms.converged, float("-inf"))
            log_w = torch.where(some, log_w, 0.0)
            per_row = -torch.logsumexp(log_w - torch.where(terms.converged, cross_entropy, 0.0), dim=0)
            per_row = torch.where(some, per_row, 0.0)
        else:
            per_row = (weights.to(logits.dtype) * torch.where(terms.converged, cross_entropy, 0.0)).sum(0)
        return self.weight * (per_row + self.penalty()) if self.alpha else self.weight * per_row

    @contextmanager
    def evaluating(self):
        """The head in evaluation mode for the block (its batch-norm on the running statistics)."""
        training = self.head.training
        self.head.eval()
        try:
            yield
        finally:
            self.head.train(training)


@torch.no_grad()
def draw_class_probabilities(flow, head, samples, weights, head_input="latent"):
    """Class probabilities of each row: its draws' softmax, averaged with their weights.

    Parameters
    ----------
    flow : ResidualFlow
    head : ClassifierHead
        Used in evaluation mode (the batch-norm's running statistics).
    samples : Tensor (n_draws, batch, d)
        Completed rows on the flow's scale.
    weights : Tensor (n_draws, batch)
        Normalised over draws.
    head_input : {"latent", "data"}, default="latent"
        What the head reads (see :class:`ClassificationTask`).

    Returns
    -------
    Tensor (batch, n_classes)
        Rows sum to 1.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> from skivcnf.conditional import ClassifierHead, draw_class_probabilities
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0))
    >>> head = ClassifierHead(3, 2, generator=torch.Generator().manual_seed(0))
    >>> samples = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(1))
    >>> proba = draw_class_probabilities(flow, head, samples, torch.full((4, 5), 0.25))
    >>> proba.shape, bool(torch.allclose(proba.sum(1), torch.ones(5)))
    (torch.Size([5, 2]), True)
    """
    training = head.training
    head.eval()
    try:
        probabilities = torch.softmax(_draw_logits(flow, head, samples, head_input), dim=-1)
    finally:
        head.train(training)
    return (weights.unsqueeze(-1).to(probabilities.dtype) * probabilities).sum(0)
