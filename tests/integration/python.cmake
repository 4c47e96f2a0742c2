# Python binding tests (client/python/test_kvtier.py) against a real kvtierd.
# The first python3 that has numpy and pytest runs them: a pyenv or venv python3 early in
# PATH often lacks the Debian packages python3-numpy and python3-pytest.
if(TARGET kvtier AND TARGET kvtierd)
	set(_kvt_py "")
	find_program(_kvt_py_path NAMES python3)
	foreach(cand /usr/bin/python3 ${_kvt_py_path})
		if(NOT _kvt_py AND EXISTS ${cand})
			execute_process(COMMAND ${cand} -c "import numpy, pytest"
				RESULT_VARIABLE _kvt_py_rc OUTPUT_QUIET ERROR_QUIET)
			if(_kvt_py_rc EQUAL 0)
				set(_kvt_py ${cand})
			endif()
		endif()
	endforeach()
	set(_kvt_py_env "KVTIER_LIB=$<TARGET_FILE:kvtier>;KVTIER_BIN_DIR=$<TARGET_FILE_DIR:kvtierd>;PYTHONDONTWRITEBYTECODE=1")
	if(KVT_SANITIZE)
		# A sanitized libkvtier.so loaded into python needs the ASan runtime first in the
		# process; python's own allocations at exit are not ours to report.
		execute_process(COMMAND ${CMAKE_C_COMPILER} -print-file-name=libasan.so
			OUTPUT_VARIABLE _kvt_asan OUTPUT_STRIP_TRAILING_WHITESPACE)
		list(APPEND _kvt_py_env "LD_PRELOAD=${_kvt_asan}" "ASAN_OPTIONS=detect_leaks=0")
	endif()
	if(_kvt_py)
		# -p no:cacheprovider and PYTHONDONTWRITEBYTECODE keep the source tree clean.
		kvt_add_test(python_binding
			COMMAND ${_kvt_py} -m pytest -q -p no:cacheprovider ${PROJECT_SOURCE_DIR}/client/python
			LABELS fast
			ENVIRONMENT "${_kvt_py_env}")
		# pip install ./client/python (offline) and cmake --install of the package; the
		# install prefix's package directory is on sys.path only for /usr and /usr/local.
		kvt_add_test(python_package
			COMMAND sh ${PROJECT_SOURCE_DIR}/tests/integration/python_package.sh ${_kvt_py}
				${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR} $<TARGET_FILE:kvtier>
				${KVT_PYTHON_INSTALL_DIR} ${CMAKE_INSTALL_PREFIX}
			LABELS fast)
	else()
		message(STATUS "kvtier: no python3 with numpy and pytest; python_binding test skipped")
		kvt_add_test(python_binding COMMAND sh -c "echo 'no python3 with numpy and pytest'; exit 77"
			LABELS fast)
	endif()
endif()
