// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControlDefaultAdminRules} from
    "@openzeppelin/contracts/access/extensions/AccessControlDefaultAdminRules.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {IMeteringLedger} from "./IMeteringLedger.sol";

/**
 * @title MeteringLedgerBase
 * @notice The storage, constants and shared rules of the MeteringLedger and of its extension.
 * @dev The ledger's code is split in two so that each half stays under the 24,576-byte code limit
 * (EIP-170) while the recording path is compiled for speed: `MeteringLedger` holds the registry,
 * tariff, recording and reads; `MeteringLedgerExtension` holds key rotation and recovery, nonce
 * cancellation, scheduled tariffs, settlement roots, disputes and reversals, and runs by
 * `delegatecall` from the ledger's fallback on the ledger's storage. Both inherit this contract
 * only, so their storage layouts are identical by construction.
 */
abstract contract MeteringLedgerBase is IMeteringLedger, AccessControlDefaultAdminRules, EIP712 {
    /*//////////////////////////////////////////////////////////////
                             STORAGE TYPES
    //////////////////////////////////////////////////////////////*/

    /// @dev One storage slot: signer (160) + creditLine (64) + status (8).
    struct Profile {
        address signer;
        uint64 creditLine;
        InstitutionStatus status;
    }

    /// @dev One storage slot: a pending recovery (signer and time it may complete) and the registry nonce
    /// that signed rotations and recovery cancellations must carry.
    struct Registry {
        address pendingSigner;
        uint64 recoveryReadyAt;
        uint32 nonce;
    }

    /// @dev One storage slot. Invariant: balance and debt are never both non-zero.
    struct Position {
        uint128 balance;
        uint128 debt;
    }

    /// @dev Cumulative counters in two slots; field offsets are the `A_*` and `B_*` constants.
    struct PackedCounters {
        uint256 a;
        uint256 b;
    }

    /// @dev One storage slot per category.
    struct Rate {
        uint64 syncUnitsPerRecord;
        uint64 fetchUnitsPerRecord;
        bool defined;
    }

    /// @dev One storage slot (16 + 32 + 64 + 64 + 8 + 72 bits) for everything a recording call
    /// reads or writes ledger-wide, so a single interaction pays for one cold slot, not three.
    /// The pause flag is kept here rather than in OpenZeppelin's Pausable (its own slot) for that
    /// reason; its events, errors and `paused()` are the same as Pausable's.
    struct Config {
        uint16 platformFeeBps;
        uint32 tariffVersion;
        uint64 currentPeriod;
        uint64 periodStartBlock;
        bool paused;
        uint72 totalSupply;
    }

    /// @dev A platform fee scheduled for the next period.
    struct ScheduledFee {
        uint16 feeBps;
        bool pending;
    }

    /// @dev Institutions whose balance the current call changed, with their balance before it and
    /// their packed counters as the call has brought them, so that one net `Transfer` and one counter
    /// write per institution happen at the end of the call. An open-addressing table in memory, kept
    /// at most half full: a lookup is one or two probes.
    struct Touched {
        address[] accounts; // length: a power of two
        uint256[] balancesBefore;
        uint256[] countersA;
        uint256[] countersB;
        uint256 count;
    }

    struct PeriodRange {
        uint64 fromBlock;
        uint64 toBlock;
        uint64 institutionCount;
    }

    /*//////////////////////////////////////////////////////////////
                               CONSTANTS
    //////////////////////////////////////////////////////////////*/

    bytes32 public constant REGISTRAR_ROLE = keccak256("REGISTRAR_ROLE");
    bytes32 public constant TARIFF_ROLE = keccak256("TARIFF_ROLE");
    bytes32 public constant RELAYER_ROLE = keccak256("RELAYER_ROLE");
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");

    uint8 public constant KIND_SYNC = 0;
    uint8 public constant KIND_FETCH = 1;
    uint8 public constant KIND_EXCHANGE = 2;

    /// @notice Fee denominator: 10,000 basis points are 100 %.
    uint256 public constant BPS_DENOMINATOR = 10_000;
    /// @notice Largest record count one interaction may carry; larger payloads are split.
    uint32 public constant MAX_RECORDS_PER_INTERACTION = 1_000_000;
    /// @notice Largest units per record a tariff may set; keeps every total far inside its storage type.
    uint64 public constant MAX_UNITS_PER_RECORD = 1_000_000_000;
    /// @notice Largest batch `recordBatch` accepts: the worst case (exchanges between institutions never
    /// touched before, each opening a nonce word, a position and its counters) is about 113,000 gas an item,
    /// and 140 of them stay under the 16,777,216 gas a transaction may use (EIP-7825);
    /// tests/contract/test_ledger_rules.py measures it.
    uint256 public constant MAX_BATCH_SIZE = 140;
    /// @notice Most rate changes that may wait for the next period (bounds the gas of `closePeriod`).
    uint256 public constant MAX_SCHEDULED_RATES = 64;
    /// @notice Shortest recovery delay and dispute window a deployment may fix (a devnet uses minutes).
    uint256 public constant MIN_DELAY = 1 seconds;
    /// @notice Longest recovery delay and dispute window a deployment may fix.
    uint256 public constant MAX_DELAY = 90 days;
    /// @dev Slots of the per-call table of touched institutions for a batch (a power of two); it is
    /// flushed when half full, so at most 32 distinct institutions wait for their net Transfer.
    uint256 internal constant BATCH_TOUCHED_SLOTS = 64;
    /// @dev A single interaction touches at most two institutions.
    uint256 internal constant SINGLE_TOUCHED_SLOTS = 4;
    /// @dev 256 nonces per bitmap word.
    uint256 internal constant NONCE_WORD_SHIFT = 8;
    uint256 internal constant NONCE_BIT_MASK = 0xff;

    /// @dev Packed counters, word `a`: three 72-bit unit totals and one 32-bit count.
    uint256 internal constant A_SYNC_UNITS = 0;
    uint256 internal constant A_FETCH_UNITS = 72;
    uint256 internal constant A_EXCHANGE_IN_UNITS = 144;
    uint256 internal constant A_SYNC_COUNT = 216;
    uint256 internal constant A_END = 248;
    /// @dev Packed counters, word `b`: two 72-bit unit totals and three 32-bit counts.
    uint256 internal constant B_EXCHANGE_OUT_UNITS = 0;
    uint256 internal constant B_FEE_UNITS = 72;
    uint256 internal constant B_FETCH_COUNT = 144;
    uint256 internal constant B_EXCHANGE_IN_COUNT = 176;
    uint256 internal constant B_EXCHANGE_OUT_COUNT = 208;
    uint256 internal constant B_END = 240;
    /// @dev The top bit of both counter words is set at registration, so that an institution's first recorded
    /// interaction rewrites non-zero slots (2,900 gas each) instead of creating them (20,000 each).
    uint256 internal constant COUNTERS_SENTINEL = 1 << 255;
    uint256 internal constant UNITS_FIELD_MASK = type(uint72).max;
    uint256 internal constant COUNT_FIELD_MASK = type(uint32).max;

    /// @notice Identifies this contract to tooling that checks a deployment.
    bytes32 public constant LEDGER_ID = keccak256("medmeter.MeteringLedger.v2");

    bytes32 public constant INTERACTION_TYPEHASH = keccak256(
        "Interaction(uint8 kind,address institution,address counterparty,uint16 category,uint32 records,uint64 units,bytes32 dataHash,uint256 nonce,uint64 deadline)"
    );
    bytes32 public constant REGISTRATION_TYPEHASH =
        keccak256("Registration(address institution,bytes32 code,string name,uint64 deadline)");
    bytes32 public constant SIGNER_ROTATION_TYPEHASH =
        keccak256("SignerRotation(address institution,address newSigner,uint256 nonce,uint64 deadline)");
    bytes32 public constant SIGNER_ACCEPTANCE_TYPEHASH =
        keccak256("SignerAcceptance(address institution,address newSigner,uint256 nonce,uint64 deadline)");
    bytes32 public constant RECOVERY_CANCELLATION_TYPEHASH =
        keccak256("RecoveryCancellation(address institution,address newSigner,uint256 nonce,uint64 deadline)");
    bytes32 public constant NONCE_CANCELLATION_TYPEHASH =
        keccak256("NonceCancellation(address institution,uint256 wordIndex,uint256 mask,uint64 deadline)");
    bytes32 public constant DISPUTE_TYPEHASH = keccak256(
        "Dispute(address institution,uint256 period,bytes32 interactionDigest,bytes32 reasonHash,uint64 deadline)"
    );
    bytes32 public constant REVERSAL_TYPEHASH = keccak256(
        "Reversal(address institution,bytes32 originalDigest,uint64 units,bytes32 reasonHash,uint64 deadline)"
    );

    /// @notice Seconds between `startRecovery` and the earliest `completeRecovery`, fixed at deploy.
    uint256 public immutable RECOVERY_DELAY;
    /// @notice Seconds a proposed settlement root stays open to supersession before it is final, fixed at deploy.
    uint256 public immutable SETTLEMENT_DISPUTE_WINDOW;

    /*//////////////////////////////////////////////////////////////
                                STORAGE
    //////////////////////////////////////////////////////////////*/

    mapping(address institution => Profile) internal _profiles;
    mapping(address institution => Position) internal _positions;
    mapping(address institution => PackedCounters) internal _counters;
    mapping(address institution => Registry) internal _registry;
    mapping(address institution => bytes32) internal _codes;
    mapping(address institution => string) internal _names;
    mapping(bytes32 code => address) internal _institutionByCode;
    mapping(address signer => address institution) internal _institutionBySigner;
    address[] internal _institutions;

    /// @dev Unordered nonces, 256 per word: nonce `n` is bit `n & 0xff` of word `n >> 8`.
    mapping(address institution => mapping(uint256 word => uint256)) internal _nonceBitmap;

    mapping(uint16 category => Rate) internal _rates;
    Config internal _config;

    mapping(uint16 category => Rate) internal _scheduledRates;
    mapping(uint16 category => string) internal _scheduledLabels;
    uint16[] internal _scheduledCategories;
    ScheduledFee internal _scheduledFee;

    mapping(uint256 period => PeriodRange) internal _periods;
    mapping(uint256 period => uint256) internal _settlementVersionCount;
    mapping(uint256 period => mapping(uint256 version => SettlementVersion)) internal _settlementVersions;

    /// @dev Digests of signed disputes and reversals already submitted, and originals already reversed.
    mapping(bytes32 digest => bool) internal _usedMessages;
    mapping(bytes32 originalDigest => bool) internal _reversed;

    /*//////////////////////////////////////////////////////////////
                              CONSTRUCTOR
    //////////////////////////////////////////////////////////////*/

    /// @dev See `MeteringLedger`'s constructor for the parameters.
    constructor(address admin, uint48 adminTransferDelay, uint256 recoveryDelay, uint256 disputeWindow)
        AccessControlDefaultAdminRules(adminTransferDelay, admin)
        EIP712("MeteringLedger", "2")
    {
        if (recoveryDelay < MIN_DELAY || recoveryDelay > MAX_DELAY) {
            revert DelayOutOfRange("recoveryDelay", recoveryDelay, MIN_DELAY, MAX_DELAY);
        }
        if (disputeWindow < MIN_DELAY || disputeWindow > MAX_DELAY) {
            revert DelayOutOfRange("disputeWindow", disputeWindow, MIN_DELAY, MAX_DELAY);
        }
        RECOVERY_DELAY = recoveryDelay;
        SETTLEMENT_DISPUTE_WINDOW = disputeWindow;
    }

    /*//////////////////////////////////////////////////////////////
                            SHARED INTERNALS
    //////////////////////////////////////////////////////////////*/

    function _requireRegistered(address account) internal view returns (Profile storage profile) {
        profile = _profiles[account];
        if (profile.status == InstitutionStatus.None) revert InstitutionNotRegistered(account);
    }

    function _checkDeadline(uint64 deadline) internal view {
        if (block.timestamp > deadline) revert SignatureExpired(deadline, block.timestamp);
    }

    function _checkNewSigner(address account, address newSigner) internal view {
        if (newSigner == address(0)) revert InvalidSignerAddress(newSigner);
        address owner_ = _institutionBySigner[newSigner];
        if (owner_ != address(0)) revert SignerAlreadyInUse(newSigner, owner_);
        // A registered institution's permanent address stays its own, even after it rotated away from it.
        if (newSigner != account && _profiles[newSigner].status != InstitutionStatus.None) {
            revert SignerAlreadyInUse(newSigner, newSigner);
        }
    }

    function _checkRegistryNonce(address account, uint256 nonce) internal view {
        uint256 expected = _registry[account].nonce;
        if (nonce != expected) revert InvalidRegistryNonce(account, nonce, expected);
    }

    /// @dev Reverts unless `signature` over the typed struct `structHash` is by `expected`; returns the digest.
    function _requireSignedBy(address account, address expected, bytes32 structHash, bytes calldata signature)
        internal
        view
        returns (bytes32 digest)
    {
        digest = _hashTypedDataV4(structHash);
        address recovered = ECDSA.recover(digest, signature);
        if (recovered != expected) revert InvalidMessageSigner(account, recovered, expected);
    }

    function _useMessage(bytes32 digest) internal {
        if (_usedMessages[digest]) revert MessageAlreadyUsed(digest);
        _usedMessages[digest] = true;
    }

    function _replaceSigner(address account, Profile storage profile, address previous, address newSigner) internal {
        delete _institutionBySigner[previous];
        _institutionBySigner[newSigner] = account;
        profile.signer = newSigner;
        ++_registry[account].nonce;
        emit SignerRotated(account, previous, newSigner);
    }

    function _cancelRecovery(address account) internal {
        Registry storage registry = _registry[account];
        address pending = registry.pendingSigner;
        if (pending == address(0)) revert NoRecoveryPending(account);
        registry.pendingSigner = address(0);
        registry.recoveryReadyAt = 0;
        ++registry.nonce;
        emit RecoveryCancelled(account, pending, msg.sender);
    }

    function _cancelNonces(address account, uint256 wordIndex, uint256 mask) internal {
        if (mask == 0) revert EmptyNonceMask(account, wordIndex);
        uint256 word = _nonceBitmap[account][wordIndex];
        _nonceBitmap[account][wordIndex] = word | mask;
        emit NoncesCancelled(account, wordIndex, mask, mask & ~word);
    }

    function _checkRate(uint64 unitsPerRecord) internal pure {
        if (unitsPerRecord > MAX_UNITS_PER_RECORD) revert RateOutOfRange(unitsPerRecord, MAX_UNITS_PER_RECORD);
    }

    function _checkFee(uint16 feeBps) internal pure {
        if (feeBps > BPS_DENOMINATOR) revert PlatformFeeOutOfRange(feeBps, BPS_DENOMINATOR);
    }

    function _applyRate(uint16 category, uint64 syncUnitsPerRecord, uint64 fetchUnitsPerRecord, string memory label)
        internal
    {
        _rates[category] =
            Rate({syncUnitsPerRecord: syncUnitsPerRecord, fetchUnitsPerRecord: fetchUnitsPerRecord, defined: true});
        uint256 version = ++_config.tariffVersion;
        emit TariffRateSet(version, category, syncUnitsPerRecord, fetchUnitsPerRecord, label);
    }

    function _applyPlatformFee(uint16 feeBps) internal {
        _config.platformFeeBps = feeBps;
        uint256 version = ++_config.tariffVersion;
        emit PlatformFeeSet(version, feeBps);
    }

    function _closedPeriod(uint256 period) internal view returns (PeriodRange memory) {
        uint256 current = _config.currentPeriod;
        if (period == 0 || period >= current) revert PeriodNotClosed(period, current);
        return _periods[period];
    }

    function _checkPeriodStarted(uint256 period) internal view {
        uint256 current = _config.currentPeriod;
        if (period == 0 || period > current) revert PeriodNotStarted(period, current);
    }

    function _checkSettlement(uint256 period, bytes32 root, uint256 rowCount) internal view {
        uint256 institutionCount_ = _closedPeriod(period).institutionCount;
        if (root == bytes32(0)) revert InvalidSettlementRoot(period);
        if (rowCount != institutionCount_) revert SettlementRowCountMismatch(period, rowCount, institutionCount_);
    }

    function _storeSettlementVersion(
        uint256 period,
        uint256 version,
        bytes32 root,
        uint256 rowCount,
        bytes32 reasonHash
    ) internal returns (uint256 finalAt) {
        finalAt = block.timestamp + SETTLEMENT_DISPUTE_WINDOW;
        _settlementVersions[period][version] = SettlementVersion({
            root: root,
            reasonHash: reasonHash,
            rowCount: uint64(rowCount),
            proposedAt: uint64(block.timestamp),
            finalAt: uint64(finalAt)
        });
        _settlementVersionCount[period] = version;
    }

    function _verifyRow(SettlementRow calldata row, bytes32[] calldata proof, bytes32 root)
        internal
        pure
        returns (bool)
    {
        if (root == bytes32(0)) return false;
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(row))));
        return MerkleProof.verifyCalldata(proof, root, leaf);
    }
}
