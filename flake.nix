# TorchSAE with Nix: `nix develop` (dev shell) or `nix build` (the package).
# Unverified: the development machine has no nixpkgs. The verified path is pip (`make test`).
# The pins below are generated from requirements.lock by scripts/sync_locks.py (same names, versions and
# wheel hashes); tests/test_lockfiles.py checks they agree.
{
  description = "TorchSAE: DeepFaceLab-style SAEHD training in PyTorch from TOML recipes";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = import nixpkgs { inherit system; };
      python = pkgs.python311;
      pins = [
      # BEGIN PINS
      { name = "absl-py"; version = "2.5.1"; url = "https://files.pythonhosted.org/packages/py3/a/absl-py/absl_py-2.5.1-py3-none-any.whl"; hash = "sha256-chIA8vDplg8sqdw6KnBrIB9fddgSwVjwWcu+Ke6vvbg="; }
      { name = "attrs"; version = "26.1.0"; url = "https://files.pythonhosted.org/packages/py3/a/attrs/attrs-26.1.0-py3-none-any.whl"; hash = "sha256-xkeqShLfutkzPKTnH+Yt3Db05jstJgo3qLg9LwQ6wwk="; }
      { name = "colorama"; version = "0.4.6"; url = "https://files.pythonhosted.org/packages/py2.py3/c/colorama/colorama-0.4.6-py2.py3-none-any.whl"; hash = "sha256-Tx2ZkfWswMoRn51ENiC3f51rM3A+UQEcFrr1evsoX8Y="; }
      { name = "dlib-bin"; version = "20.0.1.post1"; url = "https://files.pythonhosted.org/packages/cp311/d/dlib-bin/dlib_bin-20.0.1.post1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"; hash = "sha256-tce6RZ0CpKeuZXiiv9oDGdsb54C7+iGDRPCPKAFGxQk="; }
      { name = "execnet"; version = "2.1.2"; url = "https://files.pythonhosted.org/packages/py3/e/execnet/execnet-2.1.2-py3-none-any.whl"; hash = "sha256-Z/upKN1aVEt4P2BW9Enl45MaXDeLEovBhQH36nniluw="; }
      { name = "face-alignment"; version = "1.5.0"; url = "https://files.pythonhosted.org/packages/py3/f/face_alignment/face_alignment-1.5.0-py3-none-any.whl"; hash = "sha256-QWYVlcgnH/5/mbgO4M0Z6xSQodbS/8VVbgLNPWhoyRg="; }
      { name = "face-recognition-models"; version = "0.3.0"; url = "https://files.pythonhosted.org/packages/source/f/face_recognition_models/face_recognition_models-0.3.0.tar.gz"; hash = "sha256-t5vSAKiMh8mp1EbJkK5xxaYm0fNzAXTm1XAVf/HYls8="; }
      { name = "filelock"; version = "4.2.11"; url = "https://files.pythonhosted.org/packages/py3/f/filelock/filelock-4.2.11-py3-none-any.whl"; hash = "sha256-Ag4inku51BD8eZwH3fRfohfLqXAnj0CzB1HZTzCbaeI="; }
      { name = "flatbuffers"; version = "25.12.19"; url = "https://files.pythonhosted.org/packages/py2.py3/f/flatbuffers/flatbuffers-25.12.19-py2.py3-none-any.whl"; hash = "sha256-djT1DEJ4OLsCHC1mo9EWjp0ZmwYH5jKTmfBIRtQuILQ="; }
      { name = "fsspec"; version = "2026.9.0"; url = "https://files.pythonhosted.org/packages/py3/f/fsspec/fsspec-2026.9.0-py3-none-any.whl"; hash = "sha256-jdbmRumeo4K9hfl6Rea1JqRC15Qjp9xnPx4nVtBfy18="; }
      { name = "greenlet"; version = "3.5.6"; url = "https://files.pythonhosted.org/packages/cp311/g/greenlet/greenlet-3.5.6-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"; hash = "sha256-HCDqMqc9F7m2DjNxJA4XsAaBIMmKXsAaIkp92MiXM7o="; }
      { name = "grpcio"; version = "1.85.1"; url = "https://files.pythonhosted.org/packages/cp311/g/grpcio/grpcio-1.85.1-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"; hash = "sha256-g6ztKhwFZIzuDeNOUxNREYsUxYI48KYbQ1WayIUWR6g="; }
      { name = "hypothesis"; version = "6.170.15"; url = "https://files.pythonhosted.org/packages/cp311/h/hypothesis/hypothesis-6.170.15-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"; hash = "sha256-7L1ilKY2WUWAaJ3rwwEaDKPrdld3cPZhIkMUIC8QfhQ="; }
      { name = "imageio"; version = "2.38.1"; url = "https://files.pythonhosted.org/packages/py3/I/ImageIO/imageio-2.38.1-py3-none-any.whl"; hash = "sha256-NtI+t0I9L7Y/Y3CYdY7bPS3zaH9xJeClzoWWVyAi3Pk="; }
      { name = "imageio-ffmpeg"; version = "0.8.1"; url = "https://files.pythonhosted.org/packages/py3/i/imageio-ffmpeg/imageio_ffmpeg-0.8.1-py3-none-manylinux_2_28_x86_64.whl"; hash = "sha256-BQ1oUGAcOziQvSsoMG87hCs9rqOQpWEQEXQ3WhxGC9o="; }
      { name = "iniconfig"; version = "2.3.1"; url = "https://files.pythonhosted.org/packages/py3/i/iniconfig/iniconfig-2.3.1-py3-none-any.whl"; hash = "sha256-kSHiwf2zVSMklb4xlMjf6HzMLV3uRZR7eOaPSZeQ16c="; }
      { name = "jinja2"; version = "3.1.6"; url = "https://files.pythonhosted.org/packages/py3/J/Jinja2/jinja2-3.1.6-py3-none-any.whl"; hash = "sha256-hezkRR9JLQwTxd18E6ZGgahq+uY6XzR5CNrxA85tL2c="; }
      { name = "kornia"; version = "0.9.0"; url = "https://files.pythonhosted.org/packages/py3/k/kornia/kornia-0.9.0-py3-none-any.whl"; hash = "sha256-ehYy/gBKMFyU8rl5/Gq03ybgH5JedL25+LigOhIpyq8="; }
      { name = "kornia-rs"; version = "0.2.0"; url = "https://files.pythonhosted.org/packages/cp311/k/kornia_rs/kornia_rs-0.2.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"; hash = "sha256-goMyd2hbMemuGi6ezQCihkZGOgXA6oty492zKWmfjRY="; }
      { name = "lazy-loader"; version = "0.6"; url = "https://files.pythonhosted.org/packages/py3/l/lazy-loader/lazy_loader-0.6-py3-none-any.whl"; hash = "sha256-dyU74zkbBhJKDhYQW9ZjtsVEcK8anKjhzwJvONWO0FY="; }
      { name = "llvmlite"; version = "0.50.0"; url = "https://files.pythonhosted.org/packages/cp311/l/llvmlite/llvmlite-0.50.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"; hash = "sha256-pv/eANS+h3KiTj6LOva/hqeefPBm2UTvVhNrOVfXB9w="; }
      { name = "markdown"; version = "3.11.3"; url = "https://files.pythonhosted.org/packages/py3/M/Markdown/markdown-3.11.3-py3-none-any.whl"; hash = "sha256-4aMaESIyUE11PlwBu4wt6Q0/C6mGsGPhB3DPdpWwnnM="; }
      { name = "markupsafe"; version = "3.0.4"; url = "https://files.pythonhosted.org/packages/cp311/M/MarkupSafe/markupsafe-3.0.4-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl"; hash = "sha256-bag6CI+O+TstSDqCMqTb9NadPYSWtWigPFa+ysQ+GAg="; }
      { name = "ml-dtypes"; version = "0.6.0"; url = "https://files.pythonhosted.org/packages/cp311/m/ml_dtypes/ml_dtypes-0.6.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"; hash = "sha256-bI45tT6Qr9qM5ShZyT3k26PgK3bYXc8JHMRp+RhMba4="; }
      { name = "mpmath"; version = "1.3.0"; url = "https://files.pythonhosted.org/packages/py3/m/mpmath/mpmath-1.3.0-py3-none-any.whl"; hash = "sha256-oLK5/oC7zYGmZH/xMQhzjPtILUgdgmzA4C9bNeXIjSw="; }
      { name = "networkx"; version = "3.6.1"; url = "https://files.pythonhosted.org/packages/py3/n/networkx/networkx-3.6.1-py3-none-any.whl"; hash = "sha256-1H+/MC59nLu54lVaDSZ5g9KqR2usMOkN++Vmm9V/N2I="; }
      { name = "numba"; version = "0.68.1"; url = "https://files.pythonhosted.org/packages/cp311/n/numba/numba-0.68.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"; hash = "sha256-WP56OBAmHPE3l9iqlMAYz+keHorfY032DrYO+DT5Nns="; }
      { name = "numpy"; version = "2.4.6"; url = "https://files.pythonhosted.org/packages/cp311/n/numpy/numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"; hash = "sha256-ic1Gg5nP0lBHGPC6UOQQ3KVaFwthoCrZK7GMimUYbpM="; }
      { name = "onnx"; version = "1.23.2"; url = "https://files.pythonhosted.org/packages/cp311/o/onnx/onnx-1.23.2-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"; hash = "sha256-wD7Pa4NdE2EI7q7q+9ACb8ezz5hmFAn7xrY9Wik2E0g="; }
      { name = "onnxruntime"; version = "1.31.1"; url = "https://files.pythonhosted.org/packages/cp311/o/onnxruntime/onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl"; hash = "sha256-V1K9UIEmrnxJiU07nS6D8MPUhzGSRtBMREs5MwjXrX8="; }
      { name = "onnxsim"; version = "0.8.1"; url = "https://files.pythonhosted.org/packages/cp311/o/onnxsim/onnxsim-0.8.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"; hash = "sha256-ey+kWSHlfZWawx7VXma11T+GcJLyYZDGbYm9pJ0bwQI="; }
      { name = "onnxslim"; version = "0.1.98"; url = "https://files.pythonhosted.org/packages/py3/o/onnxslim/onnxslim-0.1.98-py3-none-any.whl"; hash = "sha256-JTg/zUPEcePKvrd0tc2/Pjahs/0oPH673N9apnMdzuM="; }
      { name = "opencv-python-headless"; version = "4.11.0.86"; url = "https://files.pythonhosted.org/packages/cp37/o/opencv-python-headless/opencv_python_headless-4.11.0.86-cp37-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"; hash = "sha256-DgonwZ3R9A3f+Ul2z+QwZvu+nfuy7BkH1mwZyu9CpXs="; }
      { name = "packaging"; version = "26.3"; url = "https://files.pythonhosted.org/packages/py3/p/packaging/packaging-26.3-py3-none-any.whl"; hash = "sha256-1xk/fI5Ok/RE/eAmK/kK8w4W+grQrUTLVTyHM5sjzRw="; }
      { name = "pillow"; version = "13.0.0"; url = "https://files.pythonhosted.org/packages/cp311/p/pillow/pillow-13.0.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"; hash = "sha256-piXfmipVl/peUmbgGu/IJgS7hdKR41R5gehjVg112mw="; }
      { name = "playwright"; version = "1.65.2"; url = "https://files.pythonhosted.org/packages/py3/p/playwright/playwright-1.65.2-py3-none-manylinux1_x86_64.whl"; hash = "sha256-WJMtNfVnZ6t+vN09SnM7+z5ioaW8Q8COKLn6mz5hzzM="; }
      { name = "pluggy"; version = "1.7.0"; url = "https://files.pythonhosted.org/packages/py3/p/pluggy/pluggy-1.7.0-py3-none-any.whl"; hash = "sha256-fdew2IMro8tjLDBpJt7RI0KSEbg2QbNdxcQa0tNPm+w="; }
      { name = "protobuf"; version = "7.36.2"; url = "https://files.pythonhosted.org/packages/cp310/p/protobuf/protobuf-7.36.2-cp310-abi3-manylinux2014_x86_64.whl"; hash = "sha256-ifI6pTwkVTokFv1P0ewG90+kKxS1RtiIMSiBP3dbv9I="; }
      { name = "py-cpuinfo2"; version = "10.1.1"; url = "https://files.pythonhosted.org/packages/py3/p/py-cpuinfo2/py_cpuinfo2-10.1.1-py3-none-any.whl"; hash = "sha256-rcUzlr+yBuZJjQeOwqtAf4V5ns2BlYSsNqj4Ci1Ndi0="; }
      { name = "pyee"; version = "13.0.1"; url = "https://files.pythonhosted.org/packages/py3/p/pyee/pyee-13.0.1-py3-none-any.whl"; hash = "sha256-ry+P7eQXHvZn397VP5bi7Q1ua9fuO7RkN/d+O1dokig="; }
      { name = "pygments"; version = "2.21.0"; url = "https://files.pythonhosted.org/packages/py3/P/Pygments/pygments-2.21.0-py3-none-any.whl"; hash = "sha256-I2PGm2HEqXyDjaOxMNzWRo9ISJkrIagvKmPsNDdxN9k="; }
      { name = "pytest"; version = "9.2.0"; url = "https://files.pythonhosted.org/packages/py3/p/pytest/pytest-9.2.0-py3-none-any.whl"; hash = "sha256-B6zc+I7BdPkH3AGvcL9S1JsBS7qwP67q3jHJaxjC5Yg="; }
      { name = "pytest-benchmark"; version = "5.3.1"; url = "https://files.pythonhosted.org/packages/py3/p/pytest-benchmark/pytest_benchmark-5.3.1-py3-none-any.whl"; hash = "sha256-13MqmVKxxKSjInetxpNzkSbqs3r8OnEYR/U4BcytwCA="; }
      { name = "pytest-xdist"; version = "3.8.0"; url = "https://files.pythonhosted.org/packages/py3/p/pytest-xdist/pytest_xdist-3.8.0-py3-none-any.whl"; hash = "sha256-ICyleM/rc3B4Sowz1tBbxuE7TyW1BTwwoVImn9EPC4g="; }
      { name = "pytorch-msssim"; version = "1.0.0"; url = "https://files.pythonhosted.org/packages/py3/p/pytorch-msssim/pytorch_msssim-1.0.0-py3-none-any.whl"; hash = "sha256-C0t7v3A1/p3ICEJEI3qsE7HxBIUsRbY6fp+rQ2O+3lQ="; }
      { name = "scikit-image"; version = "0.26.0"; url = "https://files.pythonhosted.org/packages/cp311/s/scikit-image/scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"; hash = "sha256-dKpVGMzqKBIfV6lTdFgdO5eYOa3CW7A/KJsbybmcWK8="; }
      { name = "scipy"; version = "1.17.1"; url = "https://files.pythonhosted.org/packages/cp311/s/scipy/scipy-1.17.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"; hash = "sha256-Q6+NHzvqZCVZAZ7f5k6bERkqiXjvvRU517wqqiPZLeQ="; }
      { name = "setuptools"; version = "84.2.1"; url = "https://files.pythonhosted.org/packages/py3/s/setuptools/setuptools-84.2.1-py3-none-any.whl"; hash = "sha256-yhQLRdUyWpR4+IDjUUhPYv7xXzNkYuRJygwDyHPVicI="; }
      { name = "sortedcontainers"; version = "2.4.0"; url = "https://files.pythonhosted.org/packages/py2.py3/s/sortedcontainers/sortedcontainers-2.4.0-py2.py3-none-any.whl"; hash = "sha256-oWPcrt4PHAIUhelXo5JFGQ50JJiX4q5LKqOFldsjfuA="; }
      { name = "sympy"; version = "1.14.0"; url = "https://files.pythonhosted.org/packages/py3/s/sympy/sympy-1.14.0-py3-none-any.whl"; hash = "sha256-4JHMPpnSFBoLooRzKPVHmwXZSmY1y5YUjMs/NGcb2PU="; }
      { name = "tensorboard"; version = "2.21.0"; url = "https://files.pythonhosted.org/packages/py3/t/tensorboard/tensorboard-2.21.0-py3-none-any.whl"; hash = "sha256-cnkxbctr1bw5HWI96oQVMSmc3hiHMQ6BM7w0qZbTIlU="; }
      { name = "tensorboard-data-server"; version = "0.7.2"; url = "https://files.pythonhosted.org/packages/py3/t/tensorboard-data-server/tensorboard_data_server-0.7.2-py3-none-manylinux_2_31_x86_64.whl"; hash = "sha256-72hxY8JBha6XVO1WUOtbxNhP8leqvcM/DMb3TYulRTA="; }
      { name = "tifffile"; version = "2026.3.3"; url = "https://files.pythonhosted.org/packages/py3/t/tifffile/tifffile-2026.3.3-py3-none-any.whl"; hash = "sha256-6L4VyUJzET0x7LeqOjmCIYndEcSWfjzIjBePGtL9EXA="; }
      { name = "torch"; version = "2.13.0"; url = "https://download.pytorch.org/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl"; hash = "sha256-Z0bby+tSbrYTMLdrQf8bTrhIlREDqJLusIDforJkZns="; }
      { name = "tqdm"; version = "4.70.1"; url = "https://files.pythonhosted.org/packages/py3/t/tqdm/tqdm-4.70.1-py3-none-any.whl"; hash = "sha256-wpPlJeb++cIOhyj9RhLfAqCqMbtf6R7Nk+Ejsbe/+nM="; }
      { name = "triton"; version = "3.9.0"; url = "https://files.pythonhosted.org/packages/cp311/t/triton/triton-3.9.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"; hash = "sha256-FiIRigOLDG4W+koDBdpiyLPBWQTuHMTU5lhGollp5B4="; }
      { name = "typing-extensions"; version = "4.16.0"; url = "https://files.pythonhosted.org/packages/py3/t/typing_extensions/typing_extensions-4.16.0-py3-none-any.whl"; hash = "sha256-SByqSBN06BPBsXatoU6X8fZ6RTnOnP6z81DXjWNwwug="; }
      { name = "werkzeug"; version = "3.1.9"; url = "https://files.pythonhosted.org/packages/py3/W/Werkzeug/werkzeug-3.1.9-py3-none-any.whl"; hash = "sha256-Y5LlDHhGC6YY5bIfCKcfWcmc6ZzcbPbj3X5szKh1T6s="; }
      # END PINS
      ];
      # Every pin is a prebuilt wheel, fetched by hash and installed as is (the same files pip installs).
      wheel = p: python.pkgs.buildPythonPackage {
        pname = p.name;
        version = p.version;
        format = "wheel";
        src = pkgs.fetchurl { url = p.url; hash = p.hash; };
        dontCheckRuntimeDeps = true;
        pythonImportsCheck = [ ];
      };
      deps = map wheel pins;
      torchsae = python.pkgs.buildPythonPackage {
        pname = "torchsae";
        version = "0.1.0";
        pyproject = true;
        src = ./.;
        build-system = [ python.pkgs.setuptools ];
        dependencies = deps;
        dontCheckRuntimeDeps = true;
        nativeBuildInputs = [ pkgs.autoPatchelfHook ];
        buildInputs = [ pkgs.stdenv.cc.cc.lib pkgs.zlib pkgs.libGL pkgs.glib ];
      };
    in {
      packages.${system}.default = torchsae;
      devShells.${system}.default = pkgs.mkShell {
        packages = [ (python.withPackages (_: deps)) pkgs.gnumake pkgs.git pkgs.ffmpeg ];
        LD_LIBRARY_PATH = pkgs.lib.makeLibraryPath [ pkgs.stdenv.cc.cc.lib pkgs.zlib pkgs.libGL pkgs.glib ];
        shellHook = ''
          export PYTHONPATH=$PWD:$PYTHONPATH
          echo "TorchSAE dev shell (python ${python.version}); run: make test"
        '';
      };
    };
}
