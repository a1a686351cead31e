"""Cryptography for Cordiale: secure aggregation and its building blocks (pure, no I/O).

Hand-written secure-aggregation protocol of Bonawitz et al. (CCS 2017) with the SecAgg+ sparse
graph of Bell et al. (CCS 2020); the primitives (X25519, HKDF-SHA256, AES-GCM, AES-CTR) come
from the ``cryptography`` package. Modules:

* :mod:`~cordiale.crypto.primitives` key pairs, key agreement, authenticated encryption;
* :mod:`~cordiale.crypto.prg` seed to mask expansion (AES-256-CTR keystream into numpy);
* :mod:`~cordiale.crypto.shamir` t-of-n secret sharing over GF(2^8);
* :mod:`~cordiale.crypto.fixedpoint` float vectors to the ring Z_{2^32} or Z_{2^64} and back;
* :mod:`~cordiale.crypto.graph` the SecAgg+ neighbour graph;
* :mod:`~cordiale.crypto.messages` the round configuration and the wire messages;
* :mod:`~cordiale.crypto.secagg` client and server state machines and in-process drivers;
* :mod:`~cordiale.crypto.pki` consortium CA, node certificates, CRL, enrolment kits (file I/O);
* :mod:`~cordiale.crypto.tokens` researcher bearer tokens, stored as hashes;
* :mod:`~cordiale.crypto.tls` the hub's and clients' TLS contexts, a server's identity.

Depends only on :mod:`cordiale.core`, numpy and cryptography.
"""

from .fixedpoint import FixedPointCodec, choose_bits, decode_weighted, encode_weighted
from .graph import neighbour_graph
from .messages import (
    AdvertiseKeysRequest,
    AggregateResult,
    KeyAdvertisement,
    MaskedInputRequest,
    MaskedInputResponse,
    SecAggConfig,
    ShareKeysRequest,
    ShareKeysResponse,
    SharePackage,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
)
from .pki import (
    CertificateAuthority,
    EnrolmentKit,
    Identity,
    IssuedCertificate,
    identity_of,
    verify_issued_by,
)
from .prg import expand_mask
from .primitives import KeyPair, agree, decrypt, derive_key, encrypt, generate_keypair
from .secagg import (
    SecAggClient,
    SecAggResult,
    SecAggServer,
    default_threshold,
    run_protocol,
    run_rounds,
    run_secagg_round,
)
from .shamir import Share, combine_shares, split_secret
from .tls import client_ssl_context, server_ssl_context
from .tokens import hash_token, new_token, token_matches

__all__ = [
    "AdvertiseKeysRequest",
    "AggregateResult",
    "CertificateAuthority",
    "EnrolmentKit",
    "FixedPointCodec",
    "Identity",
    "IssuedCertificate",
    "KeyAdvertisement",
    "KeyPair",
    "MaskedInputRequest",
    "MaskedInputResponse",
    "SecAggClient",
    "SecAggConfig",
    "SecAggResult",
    "SecAggServer",
    "Share",
    "ShareKeysRequest",
    "ShareKeysResponse",
    "SharePackage",
    "Stage",
    "UnmaskRequest",
    "UnmaskResponse",
    "agree",
    "choose_bits",
    "client_ssl_context",
    "combine_shares",
    "decode_weighted",
    "decrypt",
    "default_threshold",
    "derive_key",
    "encode_weighted",
    "encrypt",
    "expand_mask",
    "generate_keypair",
    "hash_token",
    "identity_of",
    "neighbour_graph",
    "new_token",
    "run_protocol",
    "run_rounds",
    "run_secagg_round",
    "server_ssl_context",
    "split_secret",
    "token_matches",
    "verify_issued_by",
]
