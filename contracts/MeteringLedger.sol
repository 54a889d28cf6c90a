// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";

/**
 * @title MeteringLedger
 * @notice Meters and settles health-information exchange between a regional health
 * platform and the institutions it connects (patent CN109740894A).
 *
 * Every interaction is signed (EIP-712) by the institution's current signer key and
 * relayed in batches by the platform. The contract computes the interaction's units
 * from the on-chain tariff: a `sync` credits the institution, a `fetch` debits it, an
 * `exchange` debits the consuming institution the full value and credits the providing
 * institution the value less the platform fee. Debits beyond the balance are drawn on
 * the institution's credit line and recorded as debt, which later credits repay first.
 *
 * Units are readable as an ERC-20 with zero decimals (minted on credit, burned on
 * debit) but cannot be transferred between holders.
 *
 * @dev Note: the institution address is the institution's permanent account. Its
 * signer key starts as that same address and can be rotated; balance, debt and event
 * history stay with the institution address. No personal health information is ever
 * passed to this contract: only content hashes, category ids and record counts.
 */
contract MeteringLedger is AccessControl, EIP712, IERC20Metadata {
    /*//////////////////////////////////////////////////////////////
                                 TYPES
    //////////////////////////////////////////////////////////////*/

    /// @notice Lifecycle of an institution. `None` means never registered.
    enum InstitutionStatus {
        None,
        Active,
        Suspended
    }

    /// @notice The fields an institution signs. `kind`: 0 sync, 1 fetch, 2 exchange.
    /// For sync and fetch `counterparty` is the zero address (the platform); for an
    /// exchange `institution` is the consumer and `counterparty` the provider.
    struct Interaction {
        uint8 kind;
        address institution;
        address counterparty;
        uint16 category;
        uint32 records;
        bytes32 dataHash;
        uint256 nonce;
        uint64 deadline;
    }

    /// @notice An interaction with its EIP-712 signature in compact EIP-2098 form.
    struct SignedInteraction {
        Interaction interaction;
        bytes32 r;
        bytes32 vs;
    }

    /// @dev One storage slot: signer (160) + creditLine (64) + status (8).
    struct Profile {
        address signer;
        uint64 creditLine;
        InstitutionStatus status;
    }

    /// @dev One storage slot. Invariant: balance and debt are never both non-zero.
    struct Position {
        uint128 balance;
        uint128 debt;
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

    /// @dev Institutions whose balance the current call changed, with their balance before it,
    /// so that one net `Transfer` per institution is emitted at the end of the call. An
    /// open-addressing table in memory, kept at most half full: a lookup is one or two probes
    /// where a linear scan cost about 1,700 gas per interaction in a batch of 100.
    struct Touched {
        address[] accounts; // length: a power of two
        uint256[] balancesBefore;
        uint256 count;
    }

    struct PeriodRange {
        uint64 fromBlock;
        uint64 toBlock;
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
    /// touched before, each opening a nonce word) is about 89,500 gas an item, and 180 of them stay under
    /// the 16,777,216 gas a transaction may use (EIP-7825).
    uint256 public constant MAX_BATCH_SIZE = 180;
    /// @dev Slots of the per-call table of touched institutions for a batch (a power of two); it is
    /// flushed when half full, so at most 32 distinct institutions wait for their net Transfer.
    uint256 private constant BATCH_TOUCHED_SLOTS = 64;
    /// @dev A single interaction touches at most two institutions.
    uint256 private constant SINGLE_TOUCHED_SLOTS = 4;
    /// @notice Identifies this contract to tooling that checks a deployment.
    bytes32 public constant LEDGER_ID = keccak256("medmeter.MeteringLedger.v1");

    bytes32 public constant INTERACTION_TYPEHASH = keccak256(
        "Interaction(uint8 kind,address institution,address counterparty,uint16 category,uint32 records,bytes32 dataHash,uint256 nonce,uint64 deadline)"
    );

    /*//////////////////////////////////////////////////////////////
                                STORAGE
    //////////////////////////////////////////////////////////////*/

    mapping(address institution => Profile) private _profiles;
    mapping(address institution => Position) private _positions;
    mapping(address institution => bytes32) private _codes;
    mapping(address institution => string) private _names;
    mapping(bytes32 code => address) private _institutionByCode;
    mapping(address signer => address institution) private _institutionBySigner;
    address[] private _institutions;

    /// @dev Unordered nonces, 256 per word: nonce `n` is bit `n & 0xff` of word `n >> 8`.
    mapping(address institution => mapping(uint256 word => uint256)) private _nonceBitmap;

    mapping(uint16 category => Rate) private _rates;
    Config private _config;

    mapping(uint256 period => PeriodRange) private _periods;
    mapping(uint256 period => bytes32) private _settlementRoots;

    /*//////////////////////////////////////////////////////////////
                                 EVENTS
    //////////////////////////////////////////////////////////////*/

    /// @notice An institution was registered and is active.
    event InstitutionRegistered(address indexed institution, bytes32 indexed code, string name, uint256 creditLine);
    /// @notice An institution was suspended: it can neither sign nor be credited.
    event InstitutionSuspended(address indexed institution);
    /// @notice A suspended institution was reinstated.
    event InstitutionReinstated(address indexed institution);
    /// @notice An institution's signer key was replaced.
    event SignerRotated(address indexed institution, address indexed previousSigner, address indexed newSigner);
    /// @notice An institution's credit line was changed.
    event CreditLineChanged(address indexed institution, uint256 previousCreditLine, uint256 newCreditLine);
    /// @notice The units per record of a data category were set (tariff version `version`).
    event TariffRateSet(
        uint256 indexed version, uint16 indexed category, uint256 syncUnitsPerRecord, uint256 fetchUnitsPerRecord, string label
    );
    /// @notice The platform fee on exchanges was set (tariff version `version`).
    event PlatformFeeSet(uint256 indexed version, uint256 feeBps);
    /// @notice One interaction was recorded. The settlement is computable from these events alone:
    /// a sync credits `institution` `units`; a fetch debits it `units`; an exchange debits
    /// `institution` (the consumer) `units` and credits `counterparty` (the provider) `units - fee`.
    event InteractionRecorded(
        address indexed institution,
        address indexed counterparty,
        uint8 kind,
        uint16 category,
        uint32 records,
        uint256 units,
        uint256 fee,
        bytes32 dataHash,
        uint256 nonce
    );
    /// @notice Recording was paused by `account`.
    event Paused(address account);
    /// @notice Recording was resumed by `account`.
    event Unpaused(address account);
    /// @notice Settlement period `period` was closed; it spans blocks `fromBlock`..`toBlock` inclusive.
    event PeriodClosed(uint256 indexed period, uint256 fromBlock, uint256 toBlock);
    /// @notice The Merkle root of period `period`'s settlement rows was anchored.
    event SettlementAnchored(uint256 indexed period, bytes32 root, uint256 institutionCount);

    /*//////////////////////////////////////////////////////////////
                                 ERRORS
    //////////////////////////////////////////////////////////////*/

    error InvalidInstitutionAddress(address institution);
    error InvalidInstitutionCode(bytes32 code);
    error InstitutionAlreadyRegistered(address institution);
    error InstitutionCodeTaken(bytes32 code, address holder);
    error SignerAlreadyInUse(address signer, address institution);
    error InstitutionNotRegistered(address institution);
    error InstitutionNotActive(address institution, InstitutionStatus status);
    error InstitutionStatusUnchanged(address institution, InstitutionStatus status);
    error UnknownInteractionKind(uint8 kind);
    error InvalidCounterparty(uint8 kind, address institution, address counterparty);
    error UnknownCategory(uint16 category);
    error RecordsOutOfRange(uint32 records, uint32 max);
    error InteractionExpired(uint64 deadline, uint256 blockTimestamp);
    error NonceAlreadyUsed(address institution, uint256 nonce);
    error InvalidSigner(address institution, address recovered, address expected);
    error CreditLineExceeded(address institution, uint256 balance, uint256 debt, uint256 creditLine, uint256 debit);
    error PlatformFeeOutOfRange(uint256 feeBps, uint256 max);
    error BatchSizeOutOfRange(uint256 size, uint256 max);
    error PeriodHasNoBlocks(uint256 period, uint256 startBlock);
    error PeriodNotClosed(uint256 period, uint256 currentPeriod);
    error SettlementAlreadyAnchored(uint256 period, bytes32 root);
    error InvalidSettlementRoot(uint256 period);
    error UnitsNotTransferable();
    error EnforcedPause();
    error ExpectedPause();
    error RateOutOfRange(uint64 unitsPerRecord, uint64 max);

    /*//////////////////////////////////////////////////////////////
                              CONSTRUCTOR
    //////////////////////////////////////////////////////////////*/

    /// @param admin Receives the admin role and every operating role; hand them out afterwards.
    constructor(address admin) EIP712("MeteringLedger", "1") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(REGISTRAR_ROLE, admin);
        _grantRole(TARIFF_ROLE, admin);
        _grantRole(RELAYER_ROLE, admin);
        _grantRole(SETTLER_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
        _config = Config({
            platformFeeBps: 0,
            tariffVersion: 0,
            currentPeriod: 1,
            periodStartBlock: uint64(block.number),
            paused: false,
            totalSupply: 0
        });
    }

    /*//////////////////////////////////////////////////////////////
                          INSTITUTION REGISTRY
    //////////////////////////////////////////////////////////////*/

    /**
     * @notice Registers the institution whose permanent account and initial signer is `account`.
     * @param account The institution's wallet; it becomes its permanent account address.
     * @param code The institution's official code (non-zero, unique).
     * @param displayName Display name. Public: an organisation's name, never a person's.
     * @param creditLine Units the institution may be debited beyond its balance.
     */
    function registerInstitution(address account, bytes32 code, string calldata displayName, uint64 creditLine)
        external
        onlyRole(REGISTRAR_ROLE)
    {
        if (account == address(0)) revert InvalidInstitutionAddress(account);
        if (code == bytes32(0)) revert InvalidInstitutionCode(code);
        if (_profiles[account].status != InstitutionStatus.None) revert InstitutionAlreadyRegistered(account);
        address holder = _institutionByCode[code];
        if (holder != address(0)) revert InstitutionCodeTaken(code, holder);
        address signerOwner = _institutionBySigner[account];
        if (signerOwner != address(0)) revert SignerAlreadyInUse(account, signerOwner);

        _profiles[account] =
            Profile({signer: account, creditLine: creditLine, status: InstitutionStatus.Active});
        _codes[account] = code;
        _names[account] = displayName;
        _institutionByCode[code] = account;
        _institutionBySigner[account] = account;
        _institutions.push(account);
        emit InstitutionRegistered(account, code, displayName, creditLine);
    }

    /**
     * @notice Suspends an institution: its signatures are refused and it cannot be credited.
     * @dev Its balance and debt are frozen, not cleared.
     */
    function suspendInstitution(address account) external onlyRole(REGISTRAR_ROLE) {
        _setStatus(account, InstitutionStatus.Active, InstitutionStatus.Suspended);
        emit InstitutionSuspended(account);
    }

    /// @notice Reinstates a suspended institution.
    function reinstateInstitution(address account) external onlyRole(REGISTRAR_ROLE) {
        _setStatus(account, InstitutionStatus.Suspended, InstitutionStatus.Active);
        emit InstitutionReinstated(account);
    }

    /**
     * @notice Replaces an institution's signer key, e.g. after the old key was compromised.
     * @dev Security considerations: interactions signed by the old key but not yet relayed
     * are refused from now on; the institution must sign them again.
     */
    function rotateSigner(address account, address newSigner) external onlyRole(REGISTRAR_ROLE) {
        Profile storage profile = _requireRegistered(account);
        if (newSigner == address(0)) revert InvalidInstitutionAddress(newSigner);
        address owner = _institutionBySigner[newSigner];
        if (owner != address(0)) revert SignerAlreadyInUse(newSigner, owner);
        address previous = profile.signer;
        delete _institutionBySigner[previous];
        _institutionBySigner[newSigner] = account;
        profile.signer = newSigner;
        emit SignerRotated(account, previous, newSigner);
    }

    /// @notice Sets the units an institution may be debited beyond its balance.
    /// @dev Lowering it below the current debt refuses further debits until the debt is repaid.
    function setCreditLine(address account, uint64 creditLine) external onlyRole(REGISTRAR_ROLE) {
        Profile storage profile = _requireRegistered(account);
        uint256 previous = profile.creditLine;
        profile.creditLine = creditLine;
        emit CreditLineChanged(account, previous, creditLine);
    }

    /*//////////////////////////////////////////////////////////////
                                 TARIFF
    //////////////////////////////////////////////////////////////*/

    /**
     * @notice Sets the units per record of a data category for sync and fetch. An exchange
     * is priced at the fetch rate. Every call is a new tariff version.
     * @param label Human-readable category name carried in the event (e.g. "laboratory").
     */
    function setRate(uint16 category, uint64 syncUnitsPerRecord, uint64 fetchUnitsPerRecord, string calldata label)
        external
        onlyRole(TARIFF_ROLE)
    {
        if (syncUnitsPerRecord > MAX_UNITS_PER_RECORD) revert RateOutOfRange(syncUnitsPerRecord, MAX_UNITS_PER_RECORD);
        if (fetchUnitsPerRecord > MAX_UNITS_PER_RECORD) {
            revert RateOutOfRange(fetchUnitsPerRecord, MAX_UNITS_PER_RECORD);
        }
        _rates[category] =
            Rate({syncUnitsPerRecord: syncUnitsPerRecord, fetchUnitsPerRecord: fetchUnitsPerRecord, defined: true});
        uint256 version = ++_config.tariffVersion;
        emit TariffRateSet(version, category, syncUnitsPerRecord, fetchUnitsPerRecord, label);
    }

    /// @notice Sets the platform fee on exchanges in basis points (at most 10,000).
    function setPlatformFee(uint16 feeBps) external onlyRole(TARIFF_ROLE) {
        if (feeBps > BPS_DENOMINATOR) revert PlatformFeeOutOfRange(feeBps, BPS_DENOMINATOR);
        _config.platformFeeBps = feeBps;
        uint256 version = ++_config.tariffVersion;
        emit PlatformFeeSet(version, feeBps);
    }

    /*//////////////////////////////////////////////////////////////
                               RECORDING
    //////////////////////////////////////////////////////////////*/

    /**
     * @notice Records one signed interaction.
     * @dev Reverts with the custom error naming the first failed check.
     */
    function recordInteraction(SignedInteraction calldata signed) external onlyRole(RELAYER_ROLE) {
        uint256 feeBps = _requireNotPaused();
        Touched memory touched = _newTouched(SINGLE_TOUCHED_SLOTS);
        _record(signed, feeBps, touched);
        _settleTransfers(touched);
    }

    /**
     * @notice Records a batch of signed interactions, all or nothing, in order.
     * @dev Security considerations: a single invalid item reverts the whole batch with
     * that item's error. Relayers pre-check items with `eth_call` (see `medmeter relay`).
     *
     * Note: ERC-20 `Transfer` events are emitted once per institution per call, for the net
     * units minted to or burned from it by the whole batch (see `_settleTransfers`);
     * `InteractionRecorded` is emitted for every interaction.
     */
    function recordBatch(SignedInteraction[] calldata batch) external onlyRole(RELAYER_ROLE) {
        uint256 size = batch.length;
        if (size == 0 || size > MAX_BATCH_SIZE) revert BatchSizeOutOfRange(size, MAX_BATCH_SIZE);
        uint256 feeBps = _requireNotPaused();
        Touched memory touched = _newTouched(_touchedSlots(size));
        for (uint256 i; i < size; ++i) {
            _record(batch[i], feeBps, touched);
        }
        _settleTransfers(touched);
    }

    /// @notice Stops all recording. Registry, tariff and settlement stay usable.
    function pause() external onlyRole(PAUSER_ROLE) {
        if (_config.paused) revert EnforcedPause();
        _config.paused = true;
        emit Paused(msg.sender);
    }

    /// @notice Resumes recording.
    function unpause() external onlyRole(PAUSER_ROLE) {
        if (!_config.paused) revert ExpectedPause();
        _config.paused = false;
        emit Unpaused(msg.sender);
    }

    /// @notice Whether recording is paused.
    function paused() external view returns (bool) {
        return _config.paused;
    }

    /*//////////////////////////////////////////////////////////////
                               SETTLEMENT
    //////////////////////////////////////////////////////////////*/

    /**
     * @notice Closes the current settlement period. It spans from its start block to the
     * block before this one, so the state at its `toBlock` is final for the period.
     */
    function closePeriod() external onlyRole(SETTLER_ROLE) {
        Config storage config = _config;
        uint256 period = config.currentPeriod;
        uint256 fromBlock = config.periodStartBlock;
        if (block.number <= fromBlock) revert PeriodHasNoBlocks(period, fromBlock);
        uint256 toBlock = block.number - 1;
        _periods[period] = PeriodRange({fromBlock: uint64(fromBlock), toBlock: uint64(toBlock)});
        config.currentPeriod = uint64(period + 1);
        config.periodStartBlock = uint64(block.number);
        emit PeriodClosed(period, fromBlock, toBlock);
    }

    /**
     * @notice Anchors the Merkle root of a closed period's settlement rows so that each
     * institution can verify its statement against the chain. Once per period.
     */
    function anchorSettlement(uint256 period, bytes32 root, uint256 rowCount) external onlyRole(SETTLER_ROLE) {
        uint256 current = _config.currentPeriod;
        if (period == 0 || period >= current) revert PeriodNotClosed(period, current);
        if (root == bytes32(0)) revert InvalidSettlementRoot(period);
        bytes32 existing = _settlementRoots[period];
        if (existing != bytes32(0)) revert SettlementAlreadyAnchored(period, existing);
        _settlementRoots[period] = root;
        emit SettlementAnchored(period, root, rowCount);
    }

    /*//////////////////////////////////////////////////////////////
                                 VIEWS
    //////////////////////////////////////////////////////////////*/

    /// @notice Registration data of an institution.
    function institution(address account)
        external
        view
        returns (bytes32 code, string memory displayName, address signer, InstitutionStatus status, uint256 creditLine)
    {
        Profile memory profile = _profiles[account];
        return (_codes[account], _names[account], profile.signer, profile.status, profile.creditLine);
    }

    /// @notice The institution registered under `code`, or the zero address.
    function institutionByCode(bytes32 code) external view returns (address) {
        return _institutionByCode[code];
    }

    /// @notice The institution whose current signer is `signer`, or the zero address.
    function institutionBySigner(address signer) external view returns (address) {
        return _institutionBySigner[signer];
    }

    /// @notice Number of institutions ever registered.
    function institutionCount() external view returns (uint256) {
        return _institutions.length;
    }

    /// @notice The `index`-th institution in registration order.
    function institutionAt(uint256 index) external view returns (address) {
        return _institutions[index];
    }

    /// @notice Units owed by `account` beyond its balance, drawn on its credit line.
    function debtOf(address account) external view returns (uint256) {
        return _positions[account].debt;
    }

    /// @notice Whether `nonce` of `account` has been used.
    function isNonceUsed(address account, uint256 nonce) external view returns (bool) {
        return _nonceBitmap[account][nonce >> 8] & (1 << (nonce & 0xff)) != 0;
    }

    /// @notice The 256 nonce bits of `account` starting at nonce `wordIndex * 256` (bit i = nonce used).
    /// @dev Lets a relayer check thousands of nonces with a handful of calls.
    function nonceBitmap(address account, uint256 wordIndex) external view returns (uint256) {
        return _nonceBitmap[account][wordIndex];
    }

    /// @notice Units per record of `category` and whether it is defined.
    function rateOf(uint16 category)
        external
        view
        returns (uint256 syncUnitsPerRecord, uint256 fetchUnitsPerRecord, bool defined)
    {
        Rate memory rate = _rates[category];
        return (rate.syncUnitsPerRecord, rate.fetchUnitsPerRecord, rate.defined);
    }

    /// @notice The platform fee on exchanges, in basis points.
    function platformFeeBps() external view returns (uint256) {
        return _config.platformFeeBps;
    }

    /// @notice Number of tariff changes so far.
    function tariffVersion() external view returns (uint256) {
        return _config.tariffVersion;
    }

    /// @notice The open period and its first block.
    function currentPeriod() external view returns (uint256 period, uint256 startBlock) {
        return (_config.currentPeriod, _config.periodStartBlock);
    }

    /// @notice Block range of a closed period; reverts if it is not closed.
    function periodRange(uint256 period) external view returns (uint256 fromBlock, uint256 toBlock) {
        uint256 current = _config.currentPeriod;
        if (period == 0 || period >= current) revert PeriodNotClosed(period, current);
        PeriodRange memory range = _periods[period];
        return (range.fromBlock, range.toBlock);
    }

    /// @notice The anchored settlement root of `period`, or zero.
    function settlementRoot(uint256 period) external view returns (bytes32) {
        return _settlementRoots[period];
    }

    /// @notice One institution's settlement row for a period: the leaf of the period's settlement tree.
    /// @dev Counts are numbers of interactions; `exchangeInCount` counts exchanges in which the institution
    /// provided the data, `exchangeOutCount` those in which it consumed data. `credited`, `debited`,
    /// `closingBalance` and `closingDebt` are units; the closing values are the state at the period's `toBlock`.
    struct SettlementRow {
        uint256 period;
        address institution;
        uint256 credited;
        uint256 debited;
        uint256 closingBalance;
        uint256 closingDebt;
        uint256 syncCount;
        uint256 fetchCount;
        uint256 exchangeInCount;
        uint256 exchangeOutCount;
    }

    /**
     * @notice Whether `row` is part of the settlement anchored for `row.period`, so that an institution
     * can check its statement against the chain without trusting the analyst who produced it.
     * @dev The leaf is `keccak256(bytes.concat(keccak256(abi.encode(row))))`, where `abi.encode(row)` equals
     * `abi.encode(period, institution, credited, debited, closingBalance, closingDebt, syncCount, fetchCount,
     * exchangeInCount, exchangeOutCount)` (all fields are static): the leaf encoding of OpenZeppelin's
     * StandardMerkleTree, whose sorted-pair proofs `MerkleProof` checks.
     * @param row The settlement row as written in the institution's statement.
     * @param proof Sibling hashes from the leaf up to the root.
     * @return True if the period's root is anchored and `proof` proves `row` against it; false otherwise.
     */
    function verifySettlementRow(SettlementRow calldata row, bytes32[] calldata proof) external view returns (bool) {
        bytes32 root = _settlementRoots[row.period];
        if (root == bytes32(0)) return false;
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(row))));
        return MerkleProof.verifyCalldata(proof, root, leaf);
    }

    /// @notice The EIP-712 digest the contract checks for `interaction`.
    function interactionDigest(Interaction calldata interaction) external view returns (bytes32) {
        return _hashTypedDataV4(_structHash(interaction));
    }

    /// @notice The EIP-712 domain separator of this deployment.
    // solhint-disable-next-line func-name-mixedcase
    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /*//////////////////////////////////////////////////////////////
                          ERC-20 (READ ONLY)
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IERC20Metadata
    function name() external pure returns (string memory) {
        return "medmeter metering unit";
    }

    /// @inheritdoc IERC20Metadata
    function symbol() external pure returns (string memory) {
        return "MMU";
    }

    /// @inheritdoc IERC20Metadata
    function decimals() external pure returns (uint8) {
        return 0;
    }

    /// @inheritdoc IERC20
    function totalSupply() external view returns (uint256) {
        return _config.totalSupply;
    }

    /// @inheritdoc IERC20
    function balanceOf(address account) external view returns (uint256) {
        return _positions[account].balance;
    }

    /// @notice Always zero: units cannot be approved.
    function allowance(address, address) external pure returns (uint256) {
        return 0;
    }

    /// @notice Always reverts: units are earned and spent only through recorded interactions.
    function transfer(address, uint256) external pure returns (bool) {
        revert UnitsNotTransferable();
    }

    /// @notice Always reverts: units are earned and spent only through recorded interactions.
    function transferFrom(address, address, uint256) external pure returns (bool) {
        revert UnitsNotTransferable();
    }

    /// @notice Always reverts: units are earned and spent only through recorded interactions.
    function approve(address, uint256) external pure returns (bool) {
        revert UnitsNotTransferable();
    }

    /*//////////////////////////////////////////////////////////////
                                INTERNAL
    //////////////////////////////////////////////////////////////*/

    function _record(SignedInteraction calldata signed, uint256 feeBps, Touched memory touched) private {
        Interaction calldata it = signed.interaction;
        uint8 kind = it.kind;
        address account = it.institution;
        address counterparty = it.counterparty;

        if (kind > KIND_EXCHANGE) revert UnknownInteractionKind(kind);
        if (kind == KIND_EXCHANGE) {
            if (counterparty == account || counterparty == address(0)) {
                revert InvalidCounterparty(kind, account, counterparty);
            }
        } else if (counterparty != address(0)) {
            revert InvalidCounterparty(kind, account, counterparty);
        }
        uint32 records = it.records;
        if (records == 0 || records > MAX_RECORDS_PER_INTERACTION) {
            revert RecordsOutOfRange(records, MAX_RECORDS_PER_INTERACTION);
        }
        if (block.timestamp > it.deadline) revert InteractionExpired(it.deadline, block.timestamp);

        Profile memory profile = _profiles[account];
        if (profile.status != InstitutionStatus.Active) {
            if (profile.status == InstitutionStatus.None) revert InstitutionNotRegistered(account);
            revert InstitutionNotActive(account, profile.status);
        }
        address recovered = ECDSA.recover(_hashTypedDataV4(_structHash(it)), signed.r, signed.vs);
        if (recovered != profile.signer) revert InvalidSigner(account, recovered, profile.signer);

        _useNonce(account, it.nonce);

        Rate memory rate = _rates[it.category];
        if (!rate.defined) revert UnknownCategory(it.category);

        uint256 units;
        uint256 fee = 0; // stays 0 unless the interaction is an exchange
        if (kind == KIND_SYNC) {
            units = uint256(records) * rate.syncUnitsPerRecord;
            _credit(account, units, touched);
        } else {
            units = uint256(records) * rate.fetchUnitsPerRecord;
            _debit(account, units, profile.creditLine, touched);
            if (kind == KIND_EXCHANGE) {
                InstitutionStatus providerStatus = _profiles[counterparty].status;
                if (providerStatus != InstitutionStatus.Active) {
                    if (providerStatus == InstitutionStatus.None) revert InstitutionNotRegistered(counterparty);
                    revert InstitutionNotActive(counterparty, providerStatus);
                }
                fee = units * feeBps / BPS_DENOMINATOR;
                _credit(counterparty, units - fee, touched);
            }
        }
        _emitRecorded(it, units, fee);
    }

    /// @dev Encodes straight from calldata into scratch memory that is not kept: Solidity's encoder
    /// allocates fresh memory per event, which costs quadratically more over a batch. Every field was
    /// already validated by the Solidity reads in `_record`. Layout of the static `Interaction` in
    /// calldata: kind 0x00, institution 0x20, counterparty 0x40, category 0x60, records 0x80,
    /// dataHash 0xa0, nonce 0xc0, deadline 0xe0.
    function _emitRecorded(Interaction calldata it, uint256 units, uint256 fee) private {
        bytes32 topic = InteractionRecorded.selector;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, calldataload(it))
            mstore(add(ptr, 0x20), calldataload(add(it, 0x60)))
            mstore(add(ptr, 0x40), calldataload(add(it, 0x80)))
            mstore(add(ptr, 0x60), units)
            mstore(add(ptr, 0x80), fee)
            mstore(add(ptr, 0xa0), calldataload(add(it, 0xa0)))
            mstore(add(ptr, 0xc0), calldataload(add(it, 0xc0)))
            log3(ptr, 0xe0, topic, calldataload(add(it, 0x20)), calldataload(add(it, 0x40)))
        }
    }

    /// @dev EIP-712 `hashStruct`: keccak256(typeHash || the eight 32-byte fields as laid out in calldata),
    /// which is exactly `abi.encode(INTERACTION_TYPEHASH, it...)` without allocating memory. Dirty
    /// (non-canonical) field encodings hash differently from what any wallet signs, so they fail
    /// the signer check.
    function _structHash(Interaction calldata it) private pure returns (bytes32 result) {
        bytes32 typehash = INTERACTION_TYPEHASH;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, typehash)
            calldatacopy(add(ptr, 0x20), it, 0x100)
            result := keccak256(ptr, 0x120)
        }
    }

    function _useNonce(address account, uint256 nonce) private {
        uint256 bit = 1 << (nonce & 0xff);
        mapping(uint256 => uint256) storage bitmap = _nonceBitmap[account];
        uint256 word = bitmap[nonce >> 8];
        if (word & bit != 0) revert NonceAlreadyUsed(account, nonce);
        bitmap[nonce >> 8] = word | bit;
    }

    /// @dev Repays debt first, then mints the rest.
    function _credit(address account, uint256 units, Touched memory touched) private {
        Position memory position = _positions[account];
        _touch(touched, account, position.balance);
        uint256 repaid = units < position.debt ? units : position.debt;
        position.debt -= uint128(repaid);
        position.balance += uint128(units - repaid);
        _positions[account] = position;
    }

    /// @dev Burns from the balance, then draws the shortfall on the credit line.
    function _debit(address account, uint256 units, uint256 creditLine, Touched memory touched) private {
        Position memory position = _positions[account];
        uint256 burned = units < position.balance ? units : position.balance;
        uint256 newDebt = position.debt + (units - burned);
        if (newDebt > creditLine) {
            revert CreditLineExceeded(account, position.balance, position.debt, creditLine, units);
        }
        _touch(touched, account, position.balance);
        position.balance -= uint128(burned);
        position.debt = uint128(newDebt);
        _positions[account] = position;
    }

    /// @dev Table size for a batch: a power of two at least twice the institutions it can touch
    /// (two per interaction), capped, since zeroing and scanning the table costs gas per slot.
    function _touchedSlots(uint256 batchSize) private pure returns (uint256 slots) {
        slots = SINGLE_TOUCHED_SLOTS;
        while (slots < 4 * batchSize && slots < BATCH_TOUCHED_SLOTS) {
            slots <<= 1;
        }
    }

    function _newTouched(uint256 slots) private pure returns (Touched memory) {
        return Touched(new address[](slots), new uint256[](slots), 0);
    }

    /// @dev Remembers `account`'s balance before this call first changed it.
    function _touch(Touched memory touched, address account, uint256 balanceBefore) private {
        address[] memory accounts = touched.accounts;
        uint256 mask = accounts.length - 1;
        uint256 slot = uint256(uint160(account)) & mask;
        while (true) {
            address occupant = accounts[slot];
            if (occupant == account) return;
            if (occupant == address(0)) break;
            slot = (slot + 1) & mask;
        }
        if (2 * touched.count == accounts.length) {
            _settleTransfers(touched);
            slot = uint256(uint160(account)) & mask;
        }
        accounts[slot] = account;
        touched.balancesBefore[slot] = balanceBefore;
        ++touched.count;
    }

    /// @dev Emits one `Transfer` per touched institution for its net mint or burn, and moves
    /// `totalSupply` by the same net amount, so ERC-20 readers see balances change exactly as
    /// `balanceOf` does.
    function _settleTransfers(Touched memory touched) private {
        if (touched.count == 0) return;
        uint256 supply = _config.totalSupply;
        address[] memory accounts = touched.accounts;
        for (uint256 slot; slot < accounts.length; ++slot) {
            address account = accounts[slot];
            if (account == address(0)) continue;
            uint256 before = touched.balancesBefore[slot];
            uint256 balance = _positions[account].balance;
            if (balance > before) {
                supply += balance - before;
                emit Transfer(address(0), account, balance - before);
            } else if (balance < before) {
                supply -= before - balance;
                emit Transfer(account, address(0), before - balance);
            }
            accounts[slot] = address(0);
        }
        _config.totalSupply = SafeCast.toUint72(supply);
        touched.count = 0;
    }

    /// @dev Reverts while paused; returns the platform fee, read from the same slot.
    function _requireNotPaused() private view returns (uint256 feeBps) {
        Config storage config = _config;
        if (config.paused) revert EnforcedPause();
        return config.platformFeeBps;
    }

    function _requireRegistered(address account) private view returns (Profile storage profile) {
        profile = _profiles[account];
        if (profile.status == InstitutionStatus.None) revert InstitutionNotRegistered(account);
    }

    function _setStatus(address account, InstitutionStatus from, InstitutionStatus to) private {
        Profile storage profile = _requireRegistered(account);
        if (profile.status != from) revert InstitutionStatusUnchanged(account, profile.status);
        profile.status = to;
    }
}
